"""A consumer or outbox relay that dies is restarted and its service says NOT_SERVING meanwhile (over
grpc.health.v1 from a real RpcServer); an outbox row the broker can never accept is parked, not
retried forever. Against the real broker and database."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from flywheel.common import kafka, rpc
from flywheel.common.db import Database
from flywheel.common.errors import InvalidArgument
from flywheel.common.events import Event
from flywheel.common.kafka import ConsumerRunner, ensure_topics, send_events, wait_assigned
from flywheel.common.outbox import OutboxRelay, enqueue
from flywheel.common.supervise import Backoff
from flywheel.common.topics import Topic
from flywheel.proto.events.v1 import models_pb2
from tests import polling
from tests.integration.test_kafka_runner import Effects, Pipeline, consumed, effects_migrations, promoted, scalar
from tests.kafka_helpers import header, read_records

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DUMMY_SERVICE = "tests.Dummy"

eventually = partial(polling.eventually, timeout=30.0)


class Health:
    """A real RpcServer (with one dummy service name) and a client of its grpc.health.v1."""

    def __init__(self) -> None:
        self.server = rpc.RpcServer("127.0.0.1", 0, auth=None)
        self.server.add(lambda servicer, server: None, None, DUMMY_SERVICE)
        self.channel: grpc.aio.Channel | None = None

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


# --- outbox relay ----------------------------------------------------------------------------------------------------

async def unsent(db: Database) -> int:
    return await scalar(db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL")


async def test_an_outbox_relay_that_crashes_reports_not_serving_and_is_restarted(
        infra, health: Health, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    db = await Database(infra.database_url, f"relaycrash_{unique}").open()
    topic = Topic(f"test.relaycrash.{unique}", models_pb2.ModelPromoted, "model name", 1)
    await ensure_topics(infra.kafka_bootstrap, [topic], dead_letters=False)
    relay = OutboxRelay(db, infra.kafka_bootstrap, client_id=f"tests-relaycrash-{unique}", poll_interval=0.1,
                        health=health.server.component_health("outbox-relay"),
                        restart_backoff=Backoff(initial=0.05, cap=0.2))
    crashes = 0
    broken = False
    publish_pending = relay.publish_pending

    async def publish_pending_with_a_bug() -> int:
        nonlocal crashes
        if broken:
            crashes += 1
            raise RuntimeError("a bug in the relay")
        return await publish_pending()
    monkeypatch.setattr(relay, "publish_pending", publish_pending_with_a_bug)
    restarts_before = metric("flywheel_outbox_relay_restarts_total", schema=db.schema)

    first, second = promoted(topic, "m", 1), promoted(topic, "m", 2)
    await relay.start()
    try:
        await health.wait_for(SERVING, "SERVING with the relay running")
        async with db.connection() as conn:
            await enqueue(conn, first)
        await eventually(lambda: _is(unsent(db), 0), what="the first event published")

        broken = True
        await health.wait_for(NOT_SERVING, "NOT_SERVING while the relay crashes")
        async with db.connection() as conn:
            await enqueue(conn, second)
        await eventually(lambda: _above(lambda: crashes, 2), what="the relay crashing again after restarts")
        assert await unsent(db) == 1  # it waits in the outbox
        assert await health.statuses() == {NOT_SERVING}

        broken = False
        await health.wait_for(SERVING, "SERVING once the restarted relay works")
        await eventually(lambda: _is(unsent(db), 0), what="the second event published after the restart")
    finally:
        await relay.stop()
        await db.close()
    records = await read_records(infra.kafka_bootstrap, topic.name, until=lambda rs: len(rs) >= 2, settle=0.5)
    assert [header(r, "ce_id") for r in records] == [first.id, second.id]
    assert relay.restarts >= 2
    assert metric("flywheel_outbox_relay_restarts_total", schema=db.schema) - restarts_before == relay.restarts


async def _is(value, expected) -> bool:  # type: ignore[no-untyped-def]
    return await value == expected


async def _above(value, minimum) -> bool:  # type: ignore[no-untyped-def]
    return value() > minimum


# --- outbox: messages the broker can never accept --------------------------------------------------------------------

async def test_enqueue_refuses_an_event_over_the_message_size_limit(infra, unique: str) -> None:  # type: ignore[no-untyped-def]
    db = await Database(infra.database_url, f"oversize_{unique}").open()
    topic = Topic(f"test.oversize.{unique}", models_pb2.ModelPromoted, "model name", 1)
    try:
        small = promoted(topic, "m", 1)
        huge = Event(topic, "m", models_pb2.ModelPromoted(model_name="m", actor="x" * 1_000_000), "tests")
        with pytest.raises(InvalidArgument) as info:
            async with db.connection() as conn, conn.transaction():
                await enqueue(conn, small)
                await enqueue(conn, huge)
        match = re.fullmatch(rf"event for topic {re.escape(topic.name)} is (\d+) bytes \(key \+ value \+ headers\), "
                             r"over the 1000000-byte message size limit \(FLYWHEEL_KAFKA_MAX_MESSAGE_BYTES\)",
                             str(info.value))
        assert match is not None, str(info.value)
        assert int(match.group(1)) > 1_000_000
        assert await scalar(db, "SELECT count(*) FROM outbox") == 0  # the caller's transaction rolled back

        async with db.connection() as conn:  # a limit of its own, e.g. a topic with a smaller max.message.bytes
            with pytest.raises(InvalidArgument, match="over the 100-byte"):
                await enqueue(conn, small, max_bytes=100)
            await enqueue(conn, small)
        assert await scalar(db, "SELECT count(*) FROM outbox") == 1
    finally:
        await db.close()


async def test_rows_the_broker_refuses_are_parked_and_the_rows_after_them_go_out(infra, unique: str) -> None:  # type: ignore[no-untyped-def]
    db = await Database(infra.database_url, f"parked_{unique}").open()
    topic = Topic(f"test.parked.{unique}", models_pb2.ModelPromoted, "model name", 1)
    await ensure_topics(infra.kafka_bootstrap, [topic], dead_letters=False)
    first = promoted(topic, "m", 1)
    too_large = Event(topic, "m", models_pb2.ModelPromoted(model_name="m", actor="x" * 1_100_000), "tests")
    bad_topic = promoted(topic, "m", 3)
    large_but_fine = Event(topic, "m", models_pb2.ModelPromoted(model_name="m", version=4, actor="y" * 900_000),
                           "tests")
    last = promoted(topic, "m", 5)

    async def insert_raw(conn, event: Event, topic_name: str) -> None:  # type: ignore[no-untyped-def]
        """Written past enqueue's checks (an older writer, a hand-made row)."""
        key, value, headers = event.encode()
        await conn.execute("INSERT INTO outbox (event_id, topic, key, payload, headers) VALUES (%s, %s, %s, %s, %s)",
                           (event.id, topic_name, key.decode(), value,
                            json.dumps([[k, v.decode()] for k, v in headers])))

    async with db.connection() as conn, conn.transaction():
        await enqueue(conn, first)
        await insert_raw(conn, too_large, topic.name)
        await insert_raw(conn, bad_topic, "not a topic!")
        await enqueue(conn, large_but_fine)
        await enqueue(conn, last)
    parked_before = metric("flywheel_outbox_parked_total", schema=db.schema)

    relay = OutboxRelay(db, infra.kafka_bootstrap, client_id=f"tests-parked-{unique}")
    await relay.start()
    try:
        await eventually(lambda: _is(unsent(db), 0), what="every row sent or parked")
        assert relay.healthy and relay.restarts == 0  # parking a row is the relay working, not crashing
    finally:
        await relay.stop()
    try:
        async with db.connection() as conn:
            cur = await conn.execute("SELECT event_id, sent_at IS NOT NULL AS sent, parked_at IS NOT NULL AS parked,"
                                     " error FROM outbox ORDER BY id")
            rows = {r["event_id"]: r for r in await cur.fetchall()}
    finally:
        await db.close()

    assert [(rows[e.id]["sent"], rows[e.id]["parked"]) for e in (first, too_large, bad_topic, large_but_fine, last)] \
        == [(True, False), (False, True), (False, True), (True, False), (True, False)]
    assert rows[too_large.id]["error"].startswith("MessageSizeTooLargeError: ")
    assert rows[bad_topic.id]["error"] == "InvalidTopicError: 'not a topic!' is not a valid Kafka topic name"
    assert rows[first.id]["error"] is None
    assert metric("flywheel_outbox_parked_total", schema=db.schema) - parked_before == 2

    records = await read_records(infra.kafka_bootstrap, topic.name, until=lambda rs: len(rs) >= 3, settle=1.0)
    assert [header(r, "ce_id") for r in records] == [first.id, large_but_fine.id, last.id]
    assert models_pb2.ModelPromoted.FromString(records[1].value) == large_but_fine.payload
