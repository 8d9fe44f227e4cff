"""A consumer that dies is restarted and its service says NOT_SERVING meanwhile (over grpc.health.v1
from a real RpcServer). Against the real broker and database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from flywheel.common import kafka, rpc
from flywheel.common.db import Database
from flywheel.common.kafka import ConsumerRunner, send_events, wait_assigned
from flywheel.common.supervise import Backoff
from flywheel.common.topics import Topic
from flywheel.proto.events.v1 import models_pb2
from tests import polling
from tests.integration.test_kafka_runner import Effects, Pipeline, consumed, effects_migrations, promoted

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DUMMY_SERVICE = "tests.Dummy"

eventually = partial(polling.eventually, timeout=30.0)


class Health:
    """A real RpcServer (with one dummy service name) and a client of its grpc.health.v1."""

    def __init__(self) -> None:
        self.server = rpc.RpcServer("127.0.0.1", 0)
        self.server.add(lambda servicer, server: None, None, DUMMY_SERVICE)
        self.channel: rpc.grpc.aio.Channel | None = None

    async def statuses(self) -> set[int]:
        """The status of "" and of the service name (one value when they agree, as they must)."""
        assert self.channel is not None
        stub = health_pb2_grpc.HealthStub(self.channel)
        return {(await stub.Check(health_pb2.HealthCheckRequest(service=name))).status for name in ("", DUMMY_SERVICE)}

    async def wait_for(self, status: int, what: str) -> None:
        async def reached() -> bool:
            return await self.statuses() == {status}
        await eventually(reached, what=what, state=self.statuses)


@pytest.fixture
async def health() -> AsyncIterator[Health]:
    h = Health()
    port = await h.server.start()
    try:
        async with rpc.channel(f"127.0.0.1:{port}", default_timeout=5.0) as channel:
            h.channel = channel
            yield h
    finally:
        await h.server.stop(grace=0)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- consumer runner -------------------------------------------------------------------------------------------------

async def test_a_consumer_whose_loop_dies_reports_not_serving_restarts_and_applies_the_backlog_once(
        infra, producer, health: Health, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    db = await Database(infra.database_url, f"supervise_{unique}").open(effects_migrations(tmp_path / "m"))
    topic = Topic(f"test.supervise.{unique}", models_pb2.ModelPromoted, "model name", 1)
    group = f"tests-supervise-{unique}"
    effects = Effects()
    # A short session: the new consumer joins the group without waiting out the dead one's (see resume test).
    runner = ConsumerRunner(bootstrap=infra.kafka_bootstrap, group=group, db=db, handlers={topic: effects},
                            source="tests/supervise", retry_backoff=0.01,
                            consumer_options={"session_timeout_ms": 3_000, "heartbeat_interval_ms": 500},
                            health=health.server.component_health("consumer"),
                            restart_backoff=Backoff(initial=0.05, cap=1.0))
    view = Pipeline(db, topic, runner, effects)
    restarts_before = metric("flywheel_consumer_restarts_total", consumer=group)
    release = asyncio.Event()
    await runner.start()
    try:
        await health.wait_for(SERVING, "SERVING once the consumer runs")
        await wait_assigned(runner)
        before = [promoted(topic, "m", v) for v in range(1, 4)]
        await send_events(producer, before)
        await view.wait_rows("m", 3)
        first = runner.consumer
        assert first is not None

        async def committed() -> bool:
            return await first.committed(TopicPartition(topic.name, 0)) == 3
        await eventually(committed, what="offset 3 committed")

        # From now on a new consumer is held at its start until released: the runner stays down as
        # long as this test needs to look at it (no race with a fast restart).
        class HeldConsumer(AIOKafkaConsumer):
            async def start(self) -> None:
                await release.wait()
                await super().start()
        monkeypatch.setattr(kafka, "AIOKafkaConsumer", HeldConsumer)

        # The next commit fails as one does after a rebalance or a long outage: the loop dies.
        async def commit_fails(*args: object, **kwargs: object) -> None:
            raise CommitFailedError()
        monkeypatch.setattr(first, "commit", commit_fails)
        during = [promoted(topic, "m", v) for v in range(4, 7)]
        await send_events(producer, during)

        await health.wait_for(NOT_SERVING, "NOT_SERVING once the consumer loop died")
        assert not runner.healthy and not runner.assigned.is_set()
        # What the dead consumer applied before its commit failed is in the database, uncommitted.
        applied_by_dead = [r for r in await view.rows("m") if r["version"] >= 4]
        assert 1 <= len(applied_by_dead) <= 3
        meanwhile = [promoted(topic, "m", v) for v in range(7, 10)]
        await send_events(producer, meanwhile)  # the backlog that piles up while it is down
        assert await health.statuses() == {NOT_SERVING}
        assert len(await view.rows("m")) == 3 + len(applied_by_dead)  # nothing consumes while down

        release.set()
        await health.wait_for(SERVING, "SERVING again once a new consumer runs")
        rows = await view.wait_rows("m", 9)
        assert runner.consumer is not None and runner.consumer is not first
    finally:
        release.set()
        await runner.stop()
        await db.close()

    # Nothing lost, nothing applied twice: the redelivered events were dropped by their ids.
    assert [r["version"] for r in rows] == list(range(1, 10))
    assert [r["event_id"] for r in rows] == [e.id for e in before + during + meanwhile]
    assert consumed(group, topic, "duplicate") == len(applied_by_dead)
    assert consumed(group, topic, "handled") == 9
    assert runner.restarts == 1
    assert metric("flywheel_consumer_restarts_total", consumer=group) - restarts_before == 1
    assert await health.statuses() == {NOT_SERVING}  # a stopped consumer is not healthy either
