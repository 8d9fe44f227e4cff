"""A registry running in-process on the session's broker and database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from flywheel.common import rpc
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as pb_grpc
from flywheel.registry.config import RegistrySettings
from flywheel.registry.main import RegistryApp


def registry_settings(infra, **overrides) -> RegistrySettings:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    values = dict(
        kafka_bootstrap=infra.kafka_bootstrap, database_url=infra.database_url, home=infra.home,
        grpc_port=0, metrics_port=0, db_schema=f"registry_{suffix}", consumer_group=f"registry-{suffix}",
        max_artifact_bytes=8 * 1024 * 1024,
    )
    values.update(overrides)
    return RegistrySettings(**values)


@pytest.fixture(scope="session")
async def registry_app(infra) -> AsyncIterator[RegistryApp]:  # type: ignore[no-untyped-def]
    app = RegistryApp(registry_settings(infra))
    await app.start()
    yield app
    await app.stop()


@pytest.fixture(scope="session")
async def registry(registry_app: RegistryApp) -> AsyncIterator[pb_grpc.RegistryServiceStub]:
    async with rpc.channel(registry_app.address) as channel:
        yield pb_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="session", autouse=True)
def tracing() -> None:
    """A real tracer provider, so trace context is created and propagated like in production."""
    from opentelemetry import trace

    from flywheel.common.telemetry import setup_tracing

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return
    setup_tracing("tests")


@pytest.fixture(scope="session")
async def producer(infra) -> AsyncIterator:  # type: ignore[no-untyped-def]
    from flywheel.common.kafka import new_producer

    p = new_producer(infra.kafka_bootstrap, client_id="tests")
    await p.start()
    yield p
    await p.stop()
