"""Service settings (env, then the embedded stack file) and the gRPC bootstrap: domain errors
to status codes over a real grpc.aio server, default client deadlines and health checking."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel.common import errors, rpc
from flywheel.registry.config import RegistrySettings

SHARED_ENV = ("FLYWHEEL_HOME", "FLYWHEEL_KAFKA_BOOTSTRAP", "FLYWHEEL_DATABASE_URL")


# --- settings --------------------------------------------------------------------------------------------------------

@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No FLYWHEEL_* variables from the caller's shell, and an empty home of our own."""
    for name in (*SHARED_ENV, *(n.lower() for n in SHARED_ENV), "FLYWHEEL_REGISTRY_GRPC_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "empty-home"))
    return monkeypatch


def write_stack(home: Path, kafka: str = "127.0.0.1:19092",
                database: str = "postgresql://postgres@127.0.0.1:15432/flywheel") -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "stack.json").write_text(json.dumps({"kafka_bootstrap": kafka, "database_url": database,
                                                 "kafka_port": 19092, "postgres_port": 15432}))


def test_env_variables_set_broker_and_database(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_stack(tmp_path / "home")  # the env wins over the stack file
    clean_env.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    clean_env.setenv("FLYWHEEL_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    clean_env.setenv("FLYWHEEL_DATABASE_URL", "postgresql://app@db:5432/flywheel")
    settings = RegistrySettings()
    assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert settings.database_url == "postgresql://app@db:5432/flywheel"
    assert settings.home == tmp_path / "home"
    settings.require_infrastructure()  # does not raise


def test_stack_file_fills_what_the_env_leaves_unset(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_stack(home, kafka="127.0.0.1:40001", database="postgresql://postgres@127.0.0.1:40002/flywheel")
    clean_env.setenv("FLYWHEEL_HOME", str(home))
    settings = RegistrySettings()
    assert settings.kafka_bootstrap == "127.0.0.1:40001"
    assert settings.database_url == "postgresql://postgres@127.0.0.1:40002/flywheel"

    clean_env.setenv("FLYWHEEL_DATABASE_URL", "postgresql://app@db:5432/flywheel")
    mixed = RegistrySettings()
    assert mixed.kafka_bootstrap == "127.0.0.1:40001"
    assert mixed.database_url == "postgresql://app@db:5432/flywheel"


def test_service_prefixed_variables_set_service_fields(clean_env: pytest.MonkeyPatch) -> None:
    assert RegistrySettings().grpc_port == 50051
    clean_env.setenv("FLYWHEEL_REGISTRY_GRPC_PORT", "6123")
    clean_env.setenv("FLYWHEEL_REGISTRY_DB_SCHEMA", "registry_blue")
    settings = RegistrySettings()
    assert settings.grpc_port == 6123
    assert settings.db_schema == "registry_blue"


def test_require_infrastructure_names_what_is_missing(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = RegistrySettings()
    assert settings.kafka_bootstrap == "" and settings.database_url == ""
    with pytest.raises(SystemExit) as info:
        settings.require_infrastructure()
    message = str(info.value)
    assert "FLYWHEEL_KAFKA_BOOTSTRAP" in message and "FLYWHEEL_DATABASE_URL" in message
    assert str(tmp_path / "empty-home") in message

    clean_env.setenv("FLYWHEEL_KAFKA_BOOTSTRAP", "kafka:9092")
    with pytest.raises(SystemExit) as info:
        RegistrySettings().require_infrastructure()
    assert "FLYWHEEL_DATABASE_URL" in str(info.value)
    assert "FLYWHEEL_KAFKA_BOOTSTRAP" not in str(info.value)


def test_unreadable_stack_file_counts_as_no_stack(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "stack.json").write_text("{not json")
    clean_env.setenv("FLYWHEEL_HOME", str(home))
    with pytest.raises(SystemExit, match="FLYWHEEL_KAFKA_BOOTSTRAP and FLYWHEEL_DATABASE_URL"):
        RegistrySettings().require_infrastructure()


# --- domain errors to status codes -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "code"), [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.PoisonEvent, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.FlywheelError, grpc.StatusCode.UNKNOWN),
])
def test_status_of_each_domain_error(error: type[errors.FlywheelError], code: grpc.StatusCode) -> None:
    assert rpc.status_of(error("x")) == code


def test_status_of_a_subclass_follows_its_parent() -> None:
    class ModelNotFound(errors.NotFound):
        pass
    assert rpc.status_of(ModelNotFound("no model")) == grpc.StatusCode.NOT_FOUND


# --- a real gRPC server ----------------------------------------------------------------------------------------------

SERVICE = "test.Svc"
SECRET = "db password is hunter2"


class Servicer:
    """Methods shaped like generated servicer methods: (self, request, context)."""

    @rpc.map_errors
    async def Call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        kind = request.decode()
        if kind == "not_found":
            raise errors.NotFound("model 'fraud' has no version 7")
        if kind == "invalid":
            raise errors.InvalidArgument("alias must not be empty")
        if kind == "crash":
            raise RuntimeError(SECRET)
        if kind == "abort":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        return b"ok:" + request

    @rpc.map_errors
    async def Stream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"first"
        if request == b"crash":
            raise RuntimeError(SECRET)
        if request == b"not_found":
            raise errors.NotFound("version 3 was deleted")
        yield b"second"

    async def Sleep(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(float(request.decode()))
        return b"awake"

    async def SleepStream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"tick"
        await asyncio.sleep(float(request.decode()))
        yield b"tock"

    async def Echo(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for request in requests:
            await asyncio.sleep(float(request.decode()))
            yield request


def generic_handler(servicer: Servicer) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Call": grpc.unary_unary_rpc_method_handler(servicer.Call),
        "Stream": grpc.unary_stream_rpc_method_handler(servicer.Stream),
        "Sleep": grpc.unary_unary_rpc_method_handler(servicer.Sleep),
        "SleepStream": grpc.unary_stream_rpc_method_handler(servicer.SleepStream),
        "Echo": grpc.stream_stream_rpc_method_handler(servicer.Echo),
    })


def register_generic(handler: Any, server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers((handler,))


def identity(b: bytes) -> bytes:
    return b


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[rpc.RpcServer]:
    server = rpc.RpcServer("127.0.0.1", 0, auth=None)
    server.add(register_generic, generic_handler(Servicer()), SERVICE)
    port = await server.start()
    assert port > 0 and server.port == port
    yield server
    await server.stop(grace=0.5)


@pytest.fixture(scope="module")
async def channel(server: rpc.RpcServer) -> AsyncIterator[grpc.aio.Channel]:
    async with rpc.channel(f"127.0.0.1:{server.port}", default_timeout=5.0) as ch:
        yield ch


def call(ch: grpc.aio.Channel, method: str = "Call") -> grpc.aio.UnaryUnaryMultiCallable:
    return ch.unary_unary(f"/{SERVICE}/{method}", request_serializer=identity, response_deserializer=identity)


def stream(ch: grpc.aio.Channel, method: str = "Stream") -> grpc.aio.UnaryStreamMultiCallable:
    return ch.unary_stream(f"/{SERVICE}/{method}", request_serializer=identity, response_deserializer=identity)


async def test_successful_call_passes_through(channel: grpc.aio.Channel) -> None:
    assert await call(channel)(b"hello") == b"ok:hello"


@pytest.mark.parametrize(("kind", "code", "message"), [
    ("not_found", grpc.StatusCode.NOT_FOUND, "model 'fraud' has no version 7"),
    ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "alias must not be empty"),
])
async def test_domain_errors_become_their_status_with_the_message(
        channel: grpc.aio.Channel, kind: str, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(channel)(kind.encode())
    assert info.value.code() == code
    assert info.value.details() == message


async def test_unexpected_error_is_internal_without_leaking_its_text(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(channel)(b"crash")
    assert info.value.code() == grpc.StatusCode.INTERNAL
    details = info.value.details() or ""
    assert "hunter2" not in details and "RuntimeError" not in details
    assert "internal error in Call" in details


async def test_an_explicit_abort_is_not_rewrapped(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(channel)(b"abort")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "not yours"


async def test_server_stream_completes_normally(channel: grpc.aio.Channel) -> None:
    assert [item async for item in stream(channel)(b"fine")] == [b"first", b"second"]


async def test_server_stream_delivers_items_then_the_mapped_error(channel: grpc.aio.Channel) -> None:
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for item in stream(channel)(b"not_found"):
            received.append(item)
    assert received == [b"first"]
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "version 3 was deleted"


async def test_server_stream_unexpected_error_is_internal(channel: grpc.aio.Channel) -> None:
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for item in stream(channel)(b"crash"):
            received.append(item)
    assert received == [b"first"]
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (info.value.details() or "")


# --- default deadlines -----------------------------------------------------------------------------------------------

async def test_calls_without_a_timeout_get_the_default_deadline(server: rpc.RpcServer) -> None:
    async with rpc.channel(f"127.0.0.1:{server.port}", default_timeout=0.3) as ch:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(ch, "Sleep")(b"2")
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert loop.time() - started < 1.5

        # An explicit timeout wins over the default.
        assert await call(ch, "Sleep")(b"0.5", timeout=5) == b"awake"


async def test_streams_without_a_timeout_get_the_default_deadline(server: rpc.RpcServer) -> None:
    async with rpc.channel(f"127.0.0.1:{server.port}", default_timeout=0.3) as ch:
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for item in stream(ch, "SleepStream")(b"2"):
                received.append(item)
        assert received == [b"tick"]
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        echo = ch.stream_stream(f"/{SERVICE}/Echo", request_serializer=identity, response_deserializer=identity)
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for item in echo(iter([b"0", b"2"])):
                received.append(item)
        assert received == [b"0"]
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_calls_carry_the_token_and_the_callers_trace_unless_given() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    defaults = rpc._CallDefaults(5.0, (("authorization", "Bearer mine"),))
    assert defaults.metadata(None) == (("authorization", "Bearer mine"),)  # outside a span: no traceparent
    assert defaults.metadata((("authorization", "Bearer theirs"),)) == (("authorization", "Bearer theirs"),)
    span = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1)))
    with trace.use_span(span):
        parent = f"00-{0xABC:032x}-{0xDEF:016x}-01"
        assert defaults.metadata([("x-tenant", "a")]) == (
            ("x-tenant", "a"), ("authorization", "Bearer mine"), ("traceparent", parent))
        assert rpc._CallDefaults(5.0, ()).metadata((("traceparent", "given"),)) == (("traceparent", "given"),)


# --- health ----------------------------------------------------------------------------------------------------------

async def check(ch: grpc.aio.Channel, service: str) -> int:
    response = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service))
    return response.status


async def test_health_serves_every_added_service(channel: grpc.aio.Channel) -> None:
    assert await check(channel, "") == health_pb2.HealthCheckResponse.SERVING
    assert await check(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await check(channel, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_graceful_shutdown_turns_health_not_serving() -> None:
    server = rpc.RpcServer("127.0.0.1", 0, auth=None)
    server.add(register_generic, generic_handler(Servicer()), SERVICE)
    port = await server.start()
    try:
        async with rpc.channel(f"127.0.0.1:{port}", default_timeout=5.0) as ch:
            assert await check(ch, "") == health_pb2.HealthCheckResponse.SERVING
            await server.health.enter_graceful_shutdown()
            assert await check(ch, "") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await check(ch, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
            # Still serving real calls while draining.
            assert await call(ch)(b"x") == b"ok:x"
    finally:
        await server.stop(grace=0.5)


async def test_stop_reports_not_serving_to_watchers_before_the_server_goes() -> None:
    server = rpc.RpcServer("127.0.0.1", 0, auth=None)
    server.add(register_generic, generic_handler(Servicer()), SERVICE)
    port = await server.start()
    stopping: asyncio.Task | None = None
    try:
        async with rpc.channel(f"127.0.0.1:{port}", default_timeout=10.0) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            stopping = asyncio.create_task(server.stop(grace=3.0))
            second = await asyncio.wait_for(watch.read(), 5)
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not stopping.done()  # the watcher learned before the server finished stopping
            watch.cancel()
        await asyncio.wait_for(stopping, 5)
    finally:
        if stopping is None:
            await server.stop(grace=0.5)
