"""Session fixtures: one broker, one database and one registry for the whole test run.

By default they are the embedded ones (Tansu + PostgreSQL from PyPI), started in a
temporary directory. Set FLYWHEEL_KAFKA_BOOTSTRAP and FLYWHEEL_DATABASE_URL to run
the same suite against a real Kafka and PostgreSQL instead.

A plugin, not a conftest: the repository's root `conftest.py` loads it (`pytest_plugins`), so every
test tree of the session (`tests/`, `examples/*/tests/`) shares these fixtures, and the one broker
and database, and its hooks order the whole session.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flywheel.common import rpc
from flywheel.common.auth import Role, TokenStore
from flywheel.common.db import Database
from flywheel.common.embedded import EmbeddedStack
from flywheel.common.launcher import DEMO_ROLES
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as pb_grpc
from flywheel.registry.config import RegistrySettings
from flywheel.registry.main import RegistryApp


@dataclass(frozen=True)
class Tokens:
    """Bearer tokens of the session, one per role (principal = the role's name, e.g. `operator`)."""

    admin: str
    operator: str
    service: str
    reader: str
    predict: str
    reviewer: str
    lead: str
    # What `make run` gives a demo: it trains, promotes and predicts like a user's project.
    demo: str

    def auth(self, role: str = "admin") -> rpc.ClientAuth:
        return rpc.ClientAuth(token=getattr(self, role))


def create_tokens(database_url: str) -> Tokens:
    async def create() -> Tokens:
        store = TokenStore(Database(database_url, "auth", min_size=1, max_size=1))
        await store.db.pool.open(wait=True, timeout=30)
        try:
            await store.migrate()
            made = {}
            for role in Role:
                made[role.value], _ = await store.create(role.value, [role], created_by="tests")
            made["demo"], _ = await store.create("demo", DEMO_ROLES, created_by="tests")
            return Tokens(**made)
        finally:
            await store.db.close()
    return asyncio.run(create())


@dataclass
class Infrastructure:
    kafka_bootstrap: str
    database_url: str
    home: Path
    embedded: EmbeddedStack | None
    tokens: Tokens

    def stop_broker(self) -> None:
        if self.embedded is None:
            pytest.skip("stopping the broker needs the embedded stack")
        self.embedded.kafka.stop()

    def start_broker(self) -> None:
        assert self.embedded is not None
        self.embedded.kafka.start()
        assert self.embedded.kafka.bootstrap == self.kafka_bootstrap, "the broker came back on another port"


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infrastructure]:
    home = tmp_path_factory.mktemp("flywheel")
    kafka, database = os.environ.get("FLYWHEEL_KAFKA_BOOTSTRAP"), os.environ.get("FLYWHEEL_DATABASE_URL")
    if kafka and database:
        yield Infrastructure(kafka, database, home, None, create_tokens(database))
        return
    stack = EmbeddedStack(home, durable=False).start()
    try:
        yield Infrastructure(stack.kafka.bootstrap, stack.postgres.url, home, stack, create_tokens(stack.postgres.url))
    finally:
        stack.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix, so tests sharing the session's broker and database never collide."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session", autouse=True)
async def no_grpc_server_left_running() -> AsyncIterator[None]:
    """Every test stops the gRPC servers it starts. A leaked grpc.aio server is collected after
    the event loop closed and then blocks the interpreter's exit, hanging the whole run."""
    from flywheel.common.rpc import RpcServer

    yield
    leaked = [server.address for server in list(RpcServer.running)]
    for server in list(RpcServer.running):
        await server.stop(grace=0)
    assert not leaked, f"gRPC servers left running by tests: {leaked}"


# -- shared by the integration and end-to-end tests: one in-process registry per session --------------


def registry_settings(infra, **overrides) -> RegistrySettings:  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    values = dict(
        kafka_bootstrap=infra.kafka_bootstrap, database_url=infra.database_url, home=infra.home,
        grpc_port=0, metrics_port=0, db_schema=f"registry_{suffix}", consumer_group=f"registry-{suffix}",
        max_artifact_bytes=8 * 1024 * 1024, token=infra.tokens.service,
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
async def registry(infra, registry_app: RegistryApp) -> AsyncIterator[pb_grpc.RegistryServiceStub]:  # type: ignore[no-untyped-def]
    """A registry client with the session's admin token (tests register, read and move aliases)."""
    async with rpc.channel(registry_app.address, auth=infra.tokens.auth("admin")) as channel:
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests run last: the loop test floods the session's topics (tens of thousands of
    predictions, labels and features), which integration tests reading a topic from the start
    would otherwise have to wade through first."""
    items.sort(key=lambda item: "/tests/e2e/" in str(item.path).replace("\\", "/"))
