"""The OIP v2 REST front door (Starlette, served by uvicorn in the gRPC server's event loop), which also
carries the OpenAI-compatible /v1 routes (openai_api.py).

Every route takes the same bearer token and roles as its gRPC twin (see api.ROLES): health routes are
open, predictions need `predict`, metadata `predict` or a reading role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from flywheel.common.auth import Authenticator, AuthError, bind_principal, unbind_principal
from flywheel.common.errors import InvalidArgument
from flywheel.common.http import Endpoint, auth_error_response, guard
from flywheel.common.http import error_response as error
from flywheel.common.rpc import ServerTls
from flywheel.common.telemetry import server_span
from flywheel.inference.api import ROLES
from flywheel.inference.convert import (
    HEADER_LENGTH,
    config_to_rest,
    index_request_from_rest,
    index_to_rest,
    request_from_rest,
    response_to_rest,
    stats_to_rest,
)
from flywheel.inference.dataplane import DataPlane

log = logging.getLogger(__name__)


def build_app(dp: DataPlane, authenticator: Authenticator | None = None,
              extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The REST app; `authenticator` None serves without authentication (unit tests of the routes only);
    `extra_routes`: other doors on the same port (the OpenAI-compatible /v1 routes)."""

    def needs(rpc: str) -> Callable[[Endpoint], Endpoint]:
        return guard(authenticator, ROLES[rpc], f"call {rpc}")

    async def live(request: Request) -> Response:
        return JSONResponse({"live": dp.live()}, status_code=200 if dp.live() else 503)

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": dp.ready()}, status_code=200 if dp.ready() else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(dp.server_metadata())

    def _path(request: Request) -> tuple[str, str]:
        return request.path_params["name"], request.path_params.get("version", "")

    async def model_metadata(request: Request) -> Response:
        try:
            return JSONResponse(dp.model_metadata(*_path(request)))
        except Exception as exc:
            return error(exc)

    async def model_ready(request: Request) -> Response:
        try:
            ok = dp.model_ready(*_path(request))
        except Exception as exc:
            return error(exc)
        return JSONResponse({"name": _path(request)[0], "ready": ok}, status_code=200 if ok else 503)

    async def infer(request: Request) -> Response:
        name, version = _path(request)
        try:
            header = request.headers.get(HEADER_LENGTH)
            try:
                header_length = int(header) if header is not None else None
            except ValueError:
                raise InvalidArgument(f"Inference-Header-Content-Length {header!r} is not an integer") from None
            infer_request, binary, all_binary = request_from_rest(name, version, await request.body(), header_length)
            body, length = response_to_rest(await dp.infer(infer_request), binary, all_binary)
        except Exception as exc:
            return error(exc)
        if length is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream", headers={"Inference-Header-Content-Length":
                                                                             str(length)})

    # Triton's extensions (model repository index, model configuration, statistics).

    async def repository_index(request: Request) -> Response:
        try:
            return JSONResponse(index_to_rest(dp.repository_index(ready=index_request_from_rest(await request.body()))))
        except Exception as exc:
            return error(exc)

    async def model_config(request: Request) -> Response:
        try:
            return JSONResponse(config_to_rest(dp.model_config(*_path(request))))
        except Exception as exc:
            return error(exc)

    async def model_stats(request: Request) -> Response:
        try:
            return JSONResponse(stats_to_rest(dp.model_statistics(request.path_params.get("name", ""),
                                                                  request.path_params.get("version", ""))))
        except Exception as exc:
            return error(exc)

    async def not_found(request: Request, exc: Any) -> Response:
        return JSONResponse({"error": f"no route {request.method} {request.url.path}"},
                            status_code=getattr(exc, "status_code", 404))

    live, ready = needs("ServerLive")(live), needs("ServerReady")(ready)
    server_metadata, model_metadata = needs("ServerMetadata")(server_metadata), needs("ModelMetadata")(model_metadata)
    model_ready, infer = needs("ModelReady")(model_ready), needs("ModelInfer")(infer)
    repository_index, model_config = needs("RepositoryIndex")(repository_index), needs("ModelConfig")(model_config)
    model_stats = needs("ModelStatistics")(model_stats)
    routes = [
        Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server_metadata),
        # Before /v2/models/{name}, which would take "stats" for a model name: a model called "stats"
        # has no REST metadata route (its gRPC ModelMetadata still works).
        Route("/v2/models/stats", model_stats),
        Route("/v2/models/{name}", model_metadata), Route("/v2/models/{name}/versions/{version}", model_metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/models/{name}/config", model_config),
        Route("/v2/models/{name}/versions/{version}/config", model_config),
        Route("/v2/models/{name}/stats", model_stats),
        Route("/v2/models/{name}/versions/{version}/stats", model_stats),
        *extra_routes,
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
JSON_HEADERS = [(b"content-type", b"application/json")]


class FastInfer:
    """The OIP infer route (`POST /v2/models/{name}[/versions/{version}]/infer`) served straight from ASGI,
    in front of the Starlette app that serves every other route.

    The same check, conversion and answer as the Starlette route, without routing over every route,
    Request/Response objects and the endpoint wrappers: for a tiny model those were a visible share of a
    request. The trace context of a `traceparent` header is made current, as the gRPC door does.
    """

    def __init__(self, app: Any, dp: DataPlane, authenticator: Authenticator | None) -> None:
        self.app = app
        self.dp = dp
        self.authenticator = authenticator
        self.allowed = ROLES["ModelInfer"]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"] if scope["type"] == "http" and scope["method"] == "POST" else ""
        match = INFER_PATH.fullmatch(path) if path.endswith("/infer") else None
        if match is None:
            await self.app(scope, receive, send)
            return
        authorization = header_length = traceparent = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == b"inference-header-content-length":
                header_length = value.decode("latin-1")
            elif key == b"traceparent":
                traceparent = value.decode("latin-1")
        span = server_span("POST /v2/models/{name}/infer", traceparent)
        bound = None
        try:
            if self.authenticator is not None:
                action = "call ModelInfer"
                principal = self.authenticator.authorize_cached(authorization, self.allowed, action)
                if principal is None:
                    principal = await self.authenticator.authorize(authorization, self.allowed, action)
                bound = bind_principal(principal)
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            try:
                length = int(header_length) if header_length is not None else None
            except ValueError:
                raise InvalidArgument(f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
            request, binary, all_binary = request_from_rest(match[1], match[2] or "", body, length)
            answer, answer_length = response_to_rest(await self.dp.infer(request), binary, all_binary)
        except AuthError as exc:
            await auth_error_response(exc)(scope, receive, send)
            return
        except Exception as exc:
            span.fail(exc)
            await error(exc)(scope, receive, send)
            return
        finally:
            if bound is not None:
                unbind_principal(bound)
            span.end()
        headers = JSON_HEADERS if answer_length is None else [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(answer_length).encode())]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*headers, (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


class RestServer:
    """uvicorn running `build_app(dp)` as a task of the current event loop."""

    def __init__(self, dp: DataPlane, host: str, port: int, *, authenticator: Authenticator | None,
                 tls: ServerTls | None = None, extra_routes: Sequence[BaseRoute] = (),
                 reuse_port: bool = False) -> None:
        """`tls`: HTTPS with the server certificate (and client certificates when it requires them);
        `reuse_port`: bind with SO_REUSEPORT (several worker processes serve the same port)."""
        ssl: dict[str, Any] = {}
        if tls is not None:
            import ssl as ssl_module

            ssl = {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file,
                   "ssl_ca_certs": tls.client_ca_file or None,
                   "ssl_cert_reqs": ssl_module.CERT_REQUIRED if tls.require_client_auth else ssl_module.CERT_NONE}
        app = FastInfer(build_app(dp, authenticator, extra_routes), dp, authenticator)
        # No proxy-headers middleware: nothing here reads the client's address, and it is a hop per request.
        config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_level="warning", access_log=False,
                                http="httptools", loop="none", proxy_headers=False, server_header=False, **ssl)
        self.server = uvicorn.Server(config)
        self.host, self.requested_port, self.reuse_port = host, port, reuse_port
        self.task: asyncio.Task | None = None
        self.port = 0

    def _socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.host, self.requested_port))
        sock.set_inheritable(True)
        return sock

    async def start(self) -> int:
        # `_serve`, not `serve`: the process's signal handling belongs to the app, not to uvicorn.
        sockets = [self._socket()] if self.reuse_port else None
        self.task = asyncio.create_task(self.server._serve(sockets), name="rest-server")
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise OSError("the REST server stopped while starting")
            await asyncio.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.task = None
