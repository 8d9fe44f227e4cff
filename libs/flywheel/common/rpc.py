"""gRPC bootstrap: an aio server with health checking, reflection, authentication and roles,
domain-error mapping, tracing and optional (mutual) TLS, and client channels whose calls
always carry a deadline and this process's credentials.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flywheel.common import errors
from flywheel.common.auth import Authenticator, AuthError, Roles, bind_principal, unbind_principal
from flywheel.common.supervise import HealthBoard, HealthReporter
from flywheel.common.telemetry import current_traceparent, server_span

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

STATUS_OF: dict[type[errors.FlywheelError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PoisonEvent: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}

F = TypeVar("F", bound=Callable[..., Any])


def status_of(exc: errors.FlywheelError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.UNKNOWN


# The other direction, for clients: statuses worth retrying later.
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def domain_error(service: str, address: str, exc: grpc.aio.AioRpcError) -> errors.FlywheelError:
    """The domain error for a failed call to `service` at `address`; its message says which service failed
    and why, so it reads well as is (e.g. as a run's failure reason).

    NOT_FOUND -> NotFound, UNAVAILABLE / DEADLINE_EXCEEDED -> Unavailable (retry later), INVALID_ARGUMENT ->
    InvalidArgument, anything else -> FailedPrecondition.
    """
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return errors.NotFound(f"{service}: {details}")
    if code in TRANSIENT:
        return errors.Unavailable(f"{service} at {address} did not answer ({code.name}): {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidArgument(f"{service} refused the request: {details}")
    return errors.FailedPrecondition(f"{service} failed ({code.name}): {details}")


def map_errors(method: F) -> F:
    """Turn domain errors raised by a servicer method into gRPC statuses with their message.

    Anything unexpected becomes INTERNAL with a generic message (details go to the log,
    not to the caller).
    """

    async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        if isinstance(exc, errors.FlywheelError):
            await context.abort(status_of(exc), str(exc))
        log.exception("unhandled error in %s", method.__qualname__)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see the server log")

    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except (errors.FlywheelError, Exception) as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await abort(context, exc)
        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc)
    return unary_wrapper  # type: ignore[return-value]


# Services every client may call without a token: probes and tooling must work unauthenticated.
OPEN_SERVICES = frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection"})


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call of the server's own services and checks the roles its RPC declares.

    `RpcServer` applies it when a service is added (`guard`: each method handler is wrapped once), not
    as a grpc.aio interceptor: an interceptor costs an extra coroutine and handler lookup on every call
    of every method (`intercept_service` still works for servers built by hand). The check runs with the
    call's context: a failure aborts with UNAUTHENTICATED / PERMISSION_DENIED and a message that says
    what is missing, and on success the principal is bound for `flywheel.common.auth.current_principal()`.
    An RPC without declared roles is refused: a new method is closed until someone decides who may call it.
    """

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator
        self.policy: dict[str, Roles] = {}

    def declare(self, service_name: str, roles: Mapping[str, Roles]) -> None:
        """Roles per RPC of `service_name`; every method of the service must be listed."""
        service = descriptor_pool.Default().FindServiceByName(service_name)
        methods = {m.name for m in service.methods}
        missing, unknown = sorted(methods - set(roles)), sorted(set(roles) - methods)
        if missing or unknown:
            raise ValueError(f"roles of {service_name}: " + "; ".join(
                part for part in (f"no roles declared for {', '.join(missing)}" if missing else "",
                                  f"no such RPCs {', '.join(unknown)}" if unknown else "") if part))
        for name, allowed in roles.items():
            self.policy[f"/{service_name}/{name}"] = allowed

    def check(self, method: str) -> Callable[[grpc.aio.ServicerContext, str | None], Any] | None:
        """The per-call check of `method`, or None when the method is open (no token needed)."""
        if method.split("/")[1] in OPEN_SERVICES:
            return None
        allowed = self.policy.get(method)
        if allowed is not None and not allowed:  # declared open (e.g. OIP's ServerLive / ServerReady)
            return None
        action = f"call {method.rsplit('/', 1)[-1]}"
        authenticator = self.authenticator

        async def check(context: grpc.aio.ServicerContext, header: str | None) -> Any:
            if allowed is None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"{method} declares no roles: nobody may call it")
            try:
                # Known headers (and anonymous calls) are answered from memory, without awaiting.
                principal = authenticator.authorize_cached(header, allowed, action)  # type: ignore[arg-type]
                if principal is None:
                    principal = await authenticator.authorize(header, allowed, action)  # type: ignore[arg-type]
            except AuthError as exc:
                code = grpc.StatusCode.UNAUTHENTICATED if exc.status == 401 else grpc.StatusCode.PERMISSION_DENIED
                await context.abort(code, str(exc))
            return bind_principal(principal)

        return check

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        check = self.check(details.method)
        return handler if check is None else _guarded(handler, check, details.method)


def _call_headers(context: grpc.aio.ServicerContext) -> tuple[str | None, str | None]:
    """(authorization, traceparent) of the call's metadata, in one pass."""
    authorization = traceparent = None
    for k, v in context.invocation_metadata() or ():
        if k == "authorization":
            authorization = v
        elif k == "traceparent":
            traceparent = v
    return authorization, traceparent  # type: ignore[return-value]


async def _no_check(context: grpc.aio.ServicerContext, authorization: str | None) -> None:
    return None


def _guarded(handler: Any, check: Callable[[grpc.aio.ServicerContext, str | None], Any] | None,
             method: str = "") -> Any:
    """`handler` with its call's trace context set (`telemetry.server_span`) and `check(context)` (the
    authentication, None for open methods) run before its behaviour; the principal is unbound after."""
    guard = check or _no_check

    def unbind(bound: Any) -> None:
        if bound is not None:
            unbind_principal(bound)

    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            authorization, traceparent = _call_headers(context)
            span = server_span(method, traceparent)
            try:
                bound = await guard(context, authorization)
                try:
                    return await inner(request, context)
                finally:
                    unbind(bound)
            except BaseException as exc:
                span.fail(exc)
                raise
            finally:
                span.end()
        return handler._replace(unary_unary=unary_unary)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            authorization, traceparent = _call_headers(context)
            span = server_span(method, traceparent)
            try:
                bound = await guard(context, authorization)
                try:
                    return await inner_su(requests, context)
                finally:
                    unbind(bound)
            except BaseException as exc:
                span.fail(exc)
                raise
            finally:
                span.end()
        return handler._replace(stream_unary=stream_unary)
    kind = "unary_stream" if handler.unary_stream is not None else "stream_stream"
    inner_stream = getattr(handler, kind)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        authorization, traceparent = _call_headers(context)
        span = server_span(method, traceparent)
        try:
            bound = await guard(context, authorization)
            try:
                result = inner_stream(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:  # a behaviour that writes with context.write and returns nothing
                    await result
            finally:
                unbind(bound)
        except BaseException as exc:
            span.fail(exc)
            raise
        finally:
            span.end()
    return handler._replace(**{kind: streaming})


class _GuardedGeneric(grpc.GenericRpcHandler):
    """A hand-made generic handler whose method handlers are wrapped like registered ones (on first use)."""

    def __init__(self, inner: grpc.GenericRpcHandler, auth: AuthInterceptor | None) -> None:
        self.inner = inner
        self.auth = auth
        self.wrapped: dict[str, Any] = {}

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        if method not in self.wrapped:
            handler = self.inner.service(details)
            if handler is None:
                return None
            self.wrapped[method] = _guarded(handler, self.auth.check(method) if self.auth is not None else None,
                                            method)
        return self.wrapped[method]


class _Registrar:
    """What a generated `add_*Servicer_to_server` gets instead of the server: it keeps the method
    handlers, so `RpcServer.add` wraps each one once (authentication, trace context) and registers the
    wrapped ones; calls then reach their handler without any interceptor."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        self.generic: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        # Generated code (grpcio-tools >= 1.63) passes the same handlers to add_registered_method_handlers
        # too; these are used only when it does not (hand-made generic handlers).
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self.services.setdefault(service, {}).update(handlers)


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate and key (PEM files); with `client_ca_file` and `require_client_auth`,
    clients must show a certificate that CA signed (mutual TLS)."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""
    require_client_auth: bool = False

    def credentials(self) -> grpc.ServerCredentials:
        ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())], root_certificates=ca,
            require_client_auth=self.require_client_auth and ca is not None)


class RpcServer:
    """A grpc.aio server with `grpc.health.v1`, reflection and tracing built in.

    Health ("" and every added service name) is SERVING only while the server is started, not
    shutting down, and every component that reports to it (`component_health`) is healthy;
    otherwise NOT_SERVING, so load balancers and readiness probes take it out of rotation while
    a consumer restarts, and drain it before it stops.
    """

    # Servers started and not yet stopped (tests check none is left behind: a grpc.aio server
    # collected after its event loop closed blocks interpreter exit).
    running: weakref.WeakSet[RpcServer] = weakref.WeakSet()

    def __init__(self, host: str, port: int, *, auth: Authenticator | None,
                 tls: ServerTls | None = None, interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
                 options: Iterable[tuple[str, Any]] = ()) -> None:
        """`auth`: every call of an added service is authenticated and checked against the roles its RPC
        declares (see `add`; `auth.OPEN` = no token needed); None only where nothing but plumbing is
        served (tests of this module). `options`: more grpc server options (e.g. `grpc.so_reuseport`)."""
        self.address = f"{host}:{port}"
        self.tls = tls
        # No interceptors unless asked for: authentication and the trace context are wrapped around each
        # method handler once, in `add` (an interceptor costs a coroutine and a handler lookup per call).
        # Health and reflection are plumbing: open and untraced.
        self.auth = AuthInterceptor(auth) if auth is not None else None
        self.server = grpc.aio.server(interceptors=list(interceptors) or None, options=[*CHANNEL_OPTIONS, *options])
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names: list[str] = []
        self.port = 0
        self.components = HealthBoard()
        self.components.subscribe(self._components_changed)
        self._health_lock = asyncio.Lock()
        self._health_updates: set[asyncio.Task] = set()
        self._serving = False
        self._published: bool | None = None

    def add(self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, service_name: str,
            roles: Mapping[str, Roles] | None = None) -> None:
        """Serve `servicer`; `roles` says which roles may call each of its RPCs (all must be listed)."""
        if self.auth is not None:
            if roles is None:
                raise ValueError(f"{service_name}: an authenticated server needs the roles of every RPC")
            self.auth.declare(service_name, roles)
        registrar = _Registrar()
        register(servicer, registrar)  # type: ignore[arg-type]
        if not registrar.services:
            self.server.add_generic_rpc_handlers([_GuardedGeneric(g, self.auth) for g in registrar.generic])
        for service, handlers in registrar.services.items():
            wrapped = {}
            for name, handler in handlers.items():
                method = f"/{service}/{name}"
                wrapped[name] = _guarded(handler, self.auth.check(method) if self.auth is not None else None, method)
            self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
            self.server.add_registered_method_handlers(service, wrapped)
        self.service_names.append(service_name)

    async def start(self) -> int:
        """Bind and start; returns the bound port (useful with port 0)."""
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        if self.tls is not None:
            self.port = self.server.add_secure_port(self.address, self.tls.credentials())
        else:
            self.port = self.server.add_insecure_port(self.address)
        if self.port == 0:
            raise OSError(f"could not bind gRPC server to {self.address}")
        await self.server.start()
        RpcServer.running.add(self)
        self._serving = True
        await self._publish_health()
        return self.port

    def component_health(self, name: str) -> HealthReporter:
        """Register a component of this service (a consumer, an outbox relay) whose health gates the
        server's: call the returned function with False while it is down and True once it works
        again. It counts as down until it first reports. Call from the event loop's thread."""
        return self.components.reporter(name)

    def _components_changed(self) -> None:
        if not self._serving:
            return  # `start` publishes the state it finds; after `stop` nothing changes any more
        task = asyncio.get_running_loop().create_task(self._publish_health())
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _publish_health(self) -> None:
        # One update at a time, each with the board's state when it runs: the last one wins.
        async with self._health_lock:
            healthy = self.components.healthy
            status = health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ["", *self.service_names]:
                await self.health.set(name, status)  # ignored once graceful shutdown began
            if healthy != self._published:
                self._published = healthy
                if healthy:
                    log.info("health SERVING", extra={"grpc": self.address})
                else:
                    log.warning("health NOT_SERVING: components down",
                                extra={"grpc": self.address, "down": self.components.down()})

    async def stop(self, grace: float = 5.0) -> None:
        self._serving = False
        for task in list(self._health_updates):
            task.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        RpcServer.running.discard(self)


async def wait_for_shutdown_signal() -> None:
    """Return when the process receives SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


@dataclass(frozen=True)
class ClientAuth:
    """Who this process is when it calls another Flywheel service, and how it trusts the server.

    `token` goes out as `authorization: Bearer <token>` on every call. With `ca_file` the channel
    uses TLS and verifies the server against that CA; `cert_file` + `key_file` add a client
    certificate (mutual TLS). Empty fields mean: no token / plaintext on loopback.
    """

    token: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.ca_file)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None
        return grpc.ssl_channel_credentials(root_certificates=read(self.ca_file),
                                            private_key=read(self.key_file), certificate_chain=read(self.cert_file))


class _CallDefaults:
    """What every call on a Flywheel channel carries unless the caller gives it: a deadline (no call waits
    forever), this process's bearer token, and the current trace's `traceparent` (so the served call and the
    events it causes continue the caller's trace)."""

    __slots__ = ("seconds", "token")

    def __init__(self, seconds: float, token: tuple[tuple[str, str], ...]) -> None:
        self.seconds = seconds
        self.token = token

    def metadata(self, given: Any) -> tuple[tuple[str, str], ...]:
        pairs = tuple(given or ())
        keys = {key for key, _ in pairs} if pairs else ()
        extra = self.token if self.token and "authorization" not in keys else ()
        if "traceparent" not in keys:
            traceparent = current_traceparent()
            if traceparent:
                extra = (*extra, ("traceparent", traceparent))
        return (*pairs, *extra) if extra else pairs


class _MultiCallable:
    """A channel's multi-callable with `_CallDefaults` applied to each call's keyword arguments."""

    __slots__ = ("defaults", "inner")

    def __init__(self, inner: Any, defaults: _CallDefaults) -> None:
        self.inner = inner
        self.defaults = defaults

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None, **kwargs: Any) -> Any:
        return self.inner(request, timeout=self.defaults.seconds if timeout is None else timeout,
                          metadata=self.defaults.metadata(metadata), **kwargs)


class Channel:
    """A grpc.aio channel whose calls get `_CallDefaults`, set on each call by its multi-callable.

    Not a grpc.aio client interceptor: one costs an extra task and a wrapped call object per call (a health
    Check on loopback took 0.35 ms through the default-and-tracing interceptors this replaced, 0.28 ms
    without). Everything else (`close`, `channel_ready`, `get_state`, `async with`) is the channel's own.
    """

    def __init__(self, inner: grpc.aio.Channel, defaults: _CallDefaults) -> None:
        self._inner = inner
        self._defaults = defaults

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _MultiCallable(self._inner.unary_unary(*args, **kwargs), self._defaults)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _MultiCallable(self._inner.unary_stream(*args, **kwargs), self._defaults)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _MultiCallable(self._inner.stream_unary(*args, **kwargs), self._defaults)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _MultiCallable(self._inner.stream_stream(*args, **kwargs), self._defaults)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._inner.close(None)


def channel(address: str, *, default_timeout: float = 10.0, auth: ClientAuth | None = None) -> Channel:
    """An aio channel to a Flywheel service: calls default to `default_timeout` seconds and carry
    `auth`'s bearer token and the caller's trace; TLS (mutual with a client certificate) when `auth` names a CA."""
    auth = auth or ClientAuth()
    token = (("authorization", f"Bearer {auth.token}"),) if auth.token else ()
    inner = (grpc.aio.secure_channel(address, auth.channel_credentials(), options=CHANNEL_OPTIONS) if auth.tls
             else grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS))
    return Channel(inner, _CallDefaults(default_timeout, token))
