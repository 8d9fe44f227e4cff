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
