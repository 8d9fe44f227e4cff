"""The shared Kafka and database plumbing against the real broker and database: migrations,
the idempotent consumer runner with its dead-letter topic, the bounded publisher and the outbox relay."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from opentelemetry import trace
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from psycopg import errors as pg_errors

from flywheel.common import db as db_module
from flywheel.common.db import Database, migrate
from flywheel.common.embedded import free_port
from flywheel.common.errors import PoisonEvent
from flywheel.common.events import Event
from flywheel.common.kafka import BoundedPublisher, ConsumerRunner, ensure_topics, send_events, wait_assigned
from flywheel.common.outbox import OutboxRelay, enqueue, withdraw
from flywheel.common.topics import Topic
from flywheel.proto.events.v1 import models_pb2
from tests import polling
from tests.kafka_helpers import header, read_records

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = 3


eventually = partial(polling.eventually, timeout=30.0)


async def scalar(db: Database, query: str, *args: object) -> Any:
    async with db.connection() as conn:
        row = await (await conn.execute(query, args)).fetchone()  # type: ignore[arg-type]
    return next(iter(row.values()))


def promoted(topic: Topic, model: str, version: int = 1, actor: str = "ok") -> Event:
    payload = models_pb2.ModelPromoted(model_name=model, alias="champion", version=version, actor=actor)
    return Event(topic, model, payload, "tests/kafka-runner")


def consumed(group: str, topic: Topic, outcome: str) -> float:
    value = REGISTRY.get_sample_value("flywheel_events_consumed_total",
                                      {"consumer": group, "topic": topic.name, "outcome": outcome})
    return value or 0.0


# --- database and migrations -----------------------------------------------------------------------------------------

def write_migrations(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "0001_a.sql").write_text("CREATE TABLE a (id int PRIMARY KEY);")
    (folder / "0002_b.sql").write_text("CREATE TABLE b (name text); INSERT INTO a VALUES (1);")
    # Names that do not match NNNN_name.sql are ignored; applying any of them would fail.
    for ignored in ("README.md", "003_short.sql", "0003_Upper.sql", "0003-dash.sql", "0004_b.sql.bak"):
        (folder / ignored).write_text("THIS IS NOT SQL;")
    return folder


# The shared tables' migrations (outbox, processed events, ...), which every service schema gets first.
COMMON = [f"common:{path.name[:4]}" for path in sorted((Path(db_module.__file__).parent / "migrations").glob("*.sql"))]
BOTH_TRACKS = [*COMMON, "service:0001", "service:0002"]


async def applied_versions(db: Database) -> list[str]:
    async with await AsyncConnection.connect(db.url) as conn:
        cur = await conn.execute(f"SELECT version FROM {db.schema}.schema_migrations ORDER BY version")
        return [row[0] for row in await cur.fetchall()]


async def test_open_applies_common_and_service_migrations_once(infra, unique: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "migrations")
    db = await Database(infra.database_url, f"t_{unique}").open(folder)
    try:
        assert await applied_versions(db) == BOTH_TRACKS
        assert await scalar(db, "SELECT count(*) FROM a") == 1
        # The pool's connections use the schema: the shared tables are there unqualified.
        assert await scalar(db, "SELECT count(*) FROM outbox") == 0
        assert await scalar(db, "SELECT count(*) FROM processed_events") == 0

        assert await migrate(db, folder) == []  # a second start applies nothing
        again = await Database(infra.database_url, f"t_{unique}").open(folder)
        await again.close()
        assert await applied_versions(db) == BOTH_TRACKS
        assert await scalar(db, "SELECT count(*) FROM a") == 1
    finally:
        await db.close()


async def test_concurrent_migrations_apply_each_file_exactly_once(infra, unique: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "migrations")
    dbs = [Database(infra.database_url, f"t_{unique}") for _ in range(3)]  # three replicas starting at once
    results = await asyncio.gather(*(migrate(db, folder) for db in dbs))
    assert sorted(results, key=len) == [[], [], ["0001_a.sql", "0002_b.sql"]]
    assert await applied_versions(dbs[0]) == ["service:0001", "service:0002"]
    async with await AsyncConnection.connect(infra.database_url) as conn:
        row = await (await conn.execute(f"SELECT count(*) FROM t_{unique}.a")).fetchone()
    assert row is not None and row[0] == 1

    # And three full opens (common + service tracks) on another fresh schema.
    opened = await asyncio.gather(*(Database(infra.database_url, f"u_{unique}").open(folder) for _ in range(3)))
    try:
        assert await applied_versions(opened[0]) == BOTH_TRACKS
        assert await scalar(opened[0], "SELECT count(*) FROM a") == 1
    finally:
        await asyncio.gather(*(db.close() for db in opened))


async def test_migrations_sharing_a_number_are_refused(infra, unique: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "migrations")
    (folder / "0002_c.sql").write_text("CREATE TABLE c (id int);")
    with pytest.raises(ValueError, match="share a number"):
        await migrate(Database(infra.database_url, f"t_{unique}"), folder)
    async with await AsyncConnection.connect(infra.database_url) as conn:
        cur = await conn.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (f"t_{unique}",))
        assert await cur.fetchone() is None  # refused before touching the database


async def test_pool_hands_out_the_most_recently_returned_connection(infra, unique: str) -> None:  # type: ignore[no-untyped-def]
    """A steady single caller keeps using one backend process (warm caches) after a burst grew the pool, instead of
    rotating over all of them; the least recently used connection stays first in line to be closed."""
    db = await Database(infra.database_url, f"t_{unique}", max_size=3).open()
    try:
        async def backend_pid() -> int:
            async with db.connection() as conn:
                return (await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone())["pid"]  # type: ignore[index]

        holders = [db.connection() for _ in range(3)]  # a burst: three at once grow the pool to three
        held = [await holder.__aenter__() for holder in holders]
        pids = [conn.info.backend_pid for conn in held]
        assert len(set(pids)) == 3
        for holder in holders:  # returned in order: pids[2] is the most recent
            await holder.__aexit__(None, None, None)
        assert [await backend_pid() for _ in range(5)] == [pids[2]] * 5
        assert [conn.info.backend_pid for conn in db.pool._pool] == [pids[0], pids[1], pids[2]]
    finally:
        await db.close()


async def test_failing_migration_leaves_nothing_behind(infra, unique: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = write_migrations(tmp_path / "migrations")
    (folder / "0003_c.sql").write_text("CREATE TABLE c (id int); SELECT no_such_function();")
    db = Database(infra.database_url, f"t_{unique}")
    with pytest.raises(pg_errors.UndefinedFunction):
        await migrate(db, folder)
    assert await applied_versions(db) == ["service:0001", "service:0002"]
    async with await AsyncConnection.connect(infra.database_url) as conn:
        cur = await conn.execute("SELECT to_regclass(%s)", (f"t_{unique}.c",))
        assert (await cur.fetchone()) == (None,)  # the failed file's transaction rolled back

    (folder / "0003_c.sql").write_text("CREATE TABLE c (id int);")  # fixed: the next start applies it
    assert await migrate(db, folder) == ["0003_c.sql"]
    assert await applied_versions(db) == ["service:0001", "service:0002", "service:0003"]


# --- consumer runner -------------------------------------------------------------------------------------------------

EFFECTS_SQL = """
CREATE TABLE effects (
    id       bigserial PRIMARY KEY,
    event_id text NOT NULL,          -- deliberately not unique: a double apply would show
    model    text NOT NULL,
    version  bigint NOT NULL,
    attempt  int NOT NULL
);
"""


class Effects:
    """A handler whose behaviour is chosen by the event's `actor` field; it always writes first."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.seen: list[str] = []

    async def __call__(self, event: Event, conn: AsyncConnection) -> None:
        p = event.payload
        self.attempts[event.id] += 1
        self.seen.append(event.id)
        await conn.execute("INSERT INTO effects (event_id, model, version, attempt) VALUES (%s, %s, %s, %s)",
                           (event.id, p.model_name, p.version, self.attempts[event.id]))  # type: ignore[attr-defined]
        if p.actor == "fail_once" and self.attempts[event.id] == 1:  # type: ignore[attr-defined]
            raise RuntimeError("transient: database hiccup")
        if p.actor == "always_fail":  # type: ignore[attr-defined]
            raise RuntimeError(f"cannot handle {p.model_name}")  # type: ignore[attr-defined]
        if p.actor == "poison":  # type: ignore[attr-defined]
            raise PoisonEvent(f"version {p.version} of {p.model_name} is not valid")  # type: ignore[attr-defined]


class Pipeline:
    def __init__(self, db: Database, topic: Topic, runner: ConsumerRunner, effects: Effects) -> None:
        self.db, self.topic, self.runner, self.effects = db, topic, runner, effects

    async def rows(self, model: str) -> list[dict[str, Any]]:
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT event_id, version, attempt FROM effects WHERE model = %s ORDER BY id",
                                     (model,))
            return await cur.fetchall()

    async def wait_rows(self, model: str, n: int) -> list[dict[str, Any]]:
        async def enough() -> list[dict[str, Any]]:
            rows = await self.rows(model)
            return rows if len(rows) >= n else []
        return await eventually(enough, what=f"{n} effect rows for {model}")

    async def dead_letters(self, infra, key: str, n: int = 1) -> list:  # type: ignore[no-untyped-def]
        def mine(rs: list) -> list:
            return [r for r in rs if r.key == key.encode()]
        records = await read_records(infra.kafka_bootstrap, self.topic.dlq, until=lambda rs: len(mine(rs)) >= n)
        return mine(records)


def effects_migrations(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "0001_effects.sql").write_text(EFFECTS_SQL)
    return folder


@pytest.fixture(scope="module")
async def pipeline(infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pipeline]:  # type: ignore[no-untyped-def]
    """One runner on one ad-hoc topic, shared by the runner tests (each uses its own keys)."""
    uid = uuid.uuid4().hex[:10]
    db = await Database(infra.database_url, f"runner_{uid}").open(effects_migrations(tmp_path_factory.mktemp("m")))
    topic = Topic(f"test.runner.{uid}", models_pb2.ModelPromoted, "model name", 1)
    effects = Effects()
    runner = ConsumerRunner(bootstrap=infra.kafka_bootstrap, group=f"tests-runner-{uid}", db=db,
                            handlers={topic: effects}, source="tests/runner", max_attempts=MAX_ATTEMPTS,
                            retry_backoff=0.01)
    await runner.start()
    try:
        await wait_assigned(runner)
        yield Pipeline(db, topic, runner, effects)
    finally:
        await runner.stop()
        await db.close()


async def test_each_event_is_applied_once_even_when_delivered_twice(pipeline: Pipeline, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    model = f"dup-{unique}"
    first = promoted(pipeline.topic, model, 1)
    duplicate = promoted(pipeline.topic, model, 1)
    duplicate.id = first.id  # a redelivery keeps its id
    second = promoted(pipeline.topic, model, 2)
    await send_events(producer, [first, duplicate, second])

    rows = await pipeline.wait_rows(model, 2)  # same key, one partition: `second` comes after the duplicate
    assert [(r["event_id"], r["version"]) for r in rows] == [(first.id, 1), (second.id, 2)]
    assert consumed(pipeline.runner.group, pipeline.topic, "duplicate") >= 1


async def test_a_handler_failing_once_succeeds_on_retry_and_its_first_write_is_rolled_back(
        pipeline: Pipeline, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    model = f"retry-{unique}"
    flaky = promoted(pipeline.topic, model, 1, actor="fail_once")
    await send_events(producer, [flaky, promoted(pipeline.topic, model, 2)])

    rows = await pipeline.wait_rows(model, 2)
    # Attempt 1 wrote a row and then raised: that write is gone; attempt 2's row stays.
    assert [(r["event_id"], r["attempt"]) for r in rows if r["version"] == 1] == [(flaky.id, 2)]
    assert pipeline.effects.attempts[flaky.id] == 2
    assert await scalar(pipeline.db, "SELECT count(*) FROM processed_events WHERE event_id = %s", flaky.id) == 1


async def test_a_handler_that_keeps_failing_dead_letters_and_the_runner_goes_on(
        infra, pipeline: Pipeline, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    model = f"dlq-{unique}"
    broken = promoted(pipeline.topic, model, 1, actor="always_fail")
    after = promoted(pipeline.topic, model, 2)
    await send_events(producer, [broken, after])

    rows = await pipeline.wait_rows(model, 1)
    assert [(r["event_id"], r["version"]) for r in rows] == [(after.id, 2)]  # no partial row of `broken`
    assert pipeline.effects.attempts[broken.id] == MAX_ATTEMPTS
    [record] = await pipeline.dead_letters(infra, model)
    assert header(record, "ce_id") == broken.id
    assert header(record, "dlq_error") == f"RuntimeError: cannot handle {model}"
    assert header(record, "dlq_attempts") == str(MAX_ATTEMPTS)
    assert header(record, "dlq_consumer") == pipeline.runner.group
    assert header(record, "dlq_source").startswith(f"{pipeline.topic.name}/0/")
    assert models_pb2.ModelPromoted.FromString(record.value) == broken.payload  # the original payload, untouched
    # Its id was not recorded: a fixed consumer replaying the DLQ can still apply it.
    assert await scalar(pipeline.db, "SELECT count(*) FROM processed_events WHERE event_id = %s", broken.id) == 0


async def test_a_poison_event_from_the_handler_dead_letters_without_retries(
        infra, pipeline: Pipeline, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    model = f"poison-{unique}"
    poison = promoted(pipeline.topic, model, 7, actor="poison")
    after = promoted(pipeline.topic, model, 8)
    await send_events(producer, [poison, after])

    rows = await pipeline.wait_rows(model, 1)
    assert [r["event_id"] for r in rows] == [after.id]
    assert pipeline.effects.attempts[poison.id] == 1
    [record] = await pipeline.dead_letters(infra, model)
    assert header(record, "ce_id") == poison.id
    assert header(record, "dlq_attempts") == "1"
    assert header(record, "dlq_error") == f"PoisonEvent: version 7 of {model} is not valid"


async def test_an_undecodable_record_dead_letters_and_the_runner_goes_on(
        infra, pipeline: Pipeline, producer, unique: str) -> None:  # type: ignore[no-untyped-def]
    model = f"garbage-{unique}"
    _, _, headers = promoted(pipeline.topic, model).encode()
    await producer.send_and_wait(pipeline.topic.name, value=b"\xff\xff\xff", key=model.encode(), headers=headers)
    after = promoted(pipeline.topic, model, 2)
    await send_events(producer, [after])

    rows = await pipeline.wait_rows(model, 1)
    assert [r["event_id"] for r in rows] == [after.id]
    [record] = await pipeline.dead_letters(infra, model)
    assert record.value == b"\xff\xff\xff"
    assert header(record, "dlq_attempts") == "0"
    assert header(record, "dlq_error").startswith(
        "PoisonEvent: payload is not a valid flywheel.events.v1.ModelPromoted")


async def test_a_new_runner_in_the_same_group_resumes_where_the_last_one_committed(
        infra, producer, unique: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = await Database(infra.database_url, f"resume_{unique}").open(effects_migrations(tmp_path / "m"))
    topic = Topic(f"test.resume.{unique}", models_pb2.ModelPromoted, "model name", 1)
    group = f"tests-resume-{unique}"
    view = Pipeline(db, topic, None, Effects())  # type: ignore[arg-type]

    def new_runner(effects: Effects) -> ConsumerRunner:
        # Tansu numbers a group's first generation 0 and aiokafka sends LeaveGroup only for
        # generation > 0, so the first runner never leaves: the second waits for its session
        # to expire (~18 s with the runner's 10 s default). A short session keeps this test fast.
        return ConsumerRunner(bootstrap=infra.kafka_bootstrap, group=group, db=db, handlers={topic: effects},
                              source="tests/resume", max_attempts=MAX_ATTEMPTS, retry_backoff=0.01,
                              consumer_options={"session_timeout_ms": 3_000, "heartbeat_interval_ms": 500})

    try:
        first_effects = Effects()
        first = new_runner(first_effects)
        await first.start()
        try:
            await wait_assigned(first)
            before = [promoted(topic, "m", v) for v in range(1, 6)]
            await send_events(producer, before)
            await view.wait_rows("m", 5)
            tp = TopicPartition(topic.name, 0)
            assert first.consumer is not None
            consumer = first.consumer

            async def committed() -> bool:
                return await consumer.committed(tp) == 5
            await eventually(committed, what="offset 5 committed")
        finally:
            await first.stop()

        while_stopped = [promoted(topic, "m", v) for v in range(6, 11)]
        await send_events(producer, while_stopped)

        second_effects = Effects()
        second = new_runner(second_effects)
        await second.start()
        try:
            rows = await view.wait_rows("m", 10)
        finally:
            await second.stop()
        assert [r["version"] for r in rows] == list(range(1, 11))
        assert first_effects.seen == [e.id for e in before]
        assert second_effects.seen == [e.id for e in while_stopped]  # nothing before the committed offset
        assert consumed(group, topic, "handled") == 10
        assert consumed(group, topic, "duplicate") == 0
    finally:
        await db.close()


# --- bounded publisher -----------------------------------------------------------------------------------------------

async def test_bounded_publisher_delivers_everything_it_queued(infra, unique: str) -> None:  # type: ignore[no-untyped-def]
    topic = Topic(f"test.publisher.{unique}", models_pb2.ModelPromoted, "model name", 2)
    await ensure_topics(infra.kafka_bootstrap, [topic], dead_letters=False)
    publisher = BoundedPublisher(infra.kafka_bootstrap, name=f"tests-{unique}", max_batch=50)
    await publisher.start()
    with trace.get_tracer("tests").start_as_current_span("request") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        events = [promoted(topic, f"model-{i % 5}", i) for i in range(200)]
        assert all(publisher.publish(e) for e in events)
    await publisher.stop()
    assert publisher.dropped == 0 and publisher.queue.empty()

    records = await read_records(infra.kafka_bootstrap, topic.name, until=lambda rs: len(rs) >= 200, settle=0.5)
    assert len(records) == 200
    by_id = {e.id: e for e in events}
    assert {header(r, "ce_id") for r in records} == set(by_id)
    for record in records:
        event = by_id[header(record, "ce_id")]
        assert record.key == event.key.encode()
        assert models_pb2.ModelPromoted.FromString(record.value) == event.payload
        assert header(record, "ce_type") == "flywheel.events.v1.ModelPromoted"
        assert header(record, "ce_source") == "tests/kafka-runner"
        assert header(record, "traceparent").split("-")[1] == trace_id


def dropped_total(topic: Topic, reason: str) -> float:
    return REGISTRY.get_sample_value("flywheel_events_dropped_total", {"topic": topic.name, "reason": reason}) or 0.0


async def test_bounded_publisher_never_blocks_on_an_absent_broker(unique: str) -> None:
    topic = Topic(f"test.nowhere.{unique}", models_pb2.ModelPromoted, "model name", 1)
    publisher = BoundedPublisher(f"127.0.0.1:{free_port()}", name=f"nowhere-{unique}", max_queue=10)
    await publisher.start()
    try:
        await asyncio.sleep(0.05)  # the drain task is up and waiting for events
        slowest = 0.0
        for i in range(100):  # a burst from a hot path
            started = time.perf_counter()
            publisher.publish(promoted(topic, "m", i))
            slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 0.05
        assert publisher.dropped >= 90
        assert dropped_total(topic, "queue_full") >= 90

        for i in range(100, 150):  # steady traffic while the drain task keeps failing to reach the broker
            started = time.perf_counter()
            publisher.publish(promoted(topic, "m", i))
            slowest = max(slowest, time.perf_counter() - started)
            await asyncio.sleep(0.005)
        assert slowest < 0.05
    finally:
        await publisher.stop(drain_timeout=5.0)
    # Nothing could be delivered: every event was dropped and counted, either way.
    assert publisher.dropped == 150
    assert dropped_total(topic, "broker_error") > 0
    assert dropped_total(topic, "queue_full") + dropped_total(topic, "broker_error") == 150


# --- outbox relay ----------------------------------------------------------------------------------------------------

async def test_outbox_relay_publishes_a_big_transaction_in_order_per_key(infra, unique: str) -> None:  # type: ignore[no-untyped-def]
    db = await Database(infra.database_url, f"outbox_{unique}").open()
    topic = Topic(f"test.outbox.{unique}", models_pb2.ModelPromoted, "model name", 3)
    await ensure_topics(infra.kafka_bootstrap, [topic], dead_letters=False)
    keys = [f"model-{k}" for k in "abcd"]
    events = [promoted(topic, keys[i % 4], i) for i in range(1000)]
    async with db.connection() as conn, conn.transaction():
        for event in events:
            await enqueue(conn, event)
    assert await scalar(db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 1000

    relay = OutboxRelay(db, infra.kafka_bootstrap, client_id=f"tests-outbox-{unique}")
    await relay.start()
    try:
        records = await read_records(infra.kafka_bootstrap, topic.name, until=lambda rs: len(rs) >= 1000,
                                     settle=0.5)

        async def all_sent() -> bool:
            return await scalar(db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
        await eventually(all_sent, what="every outbox row marked sent")
    finally:
        await relay.stop()
        await db.close()

    assert len(records) == 1000
    assert {header(r, "ce_id") for r in records} == {e.id for e in events}
    sequences: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        sequences[record.key.decode()].append(models_pb2.ModelPromoted.FromString(record.value).version)
        partitions[record.key.decode()].add(record.partition)
    assert sorted(sequences) == keys
    for i, key in enumerate(keys):
        assert sequences[key] == list(range(i, 1000, 4)), f"{key} out of order"
        assert len(partitions[key]) == 1


# --- batch handlers --------------------------------------------------------------------------------------------------

async def test_batch_handler_applies_each_event_once_and_isolates_a_bad_one(
        infra, producer, unique: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = await Database(infra.database_url, f"batch_{unique}").open(effects_migrations(tmp_path / "m"))
    topic = Topic(f"test.batch.{unique}", models_pb2.ModelPromoted, "model name", 1)
    effects = Effects()
    batch_sizes: list[int] = []

    async def apply_batch(events: list[Event], conn: AsyncConnection) -> None:
        batch_sizes.append(len(events))
        for event in events:
            await effects(event, conn)

    runner = ConsumerRunner(bootstrap=infra.kafka_bootstrap, group=f"tests-batch-{unique}", db=db,
                            batch_handlers={topic: apply_batch}, source="tests/batch", max_attempts=MAX_ATTEMPTS,
                            retry_backoff=0.01)
    model = f"batch-{unique}"
    events = [promoted(topic, model, v) for v in range(1, 201)]
    redelivered = promoted(topic, model, 1)
    redelivered.id = events[0].id
    bad = promoted(topic, model, 999, actor="always_fail")
    await ensure_topics(infra.kafka_bootstrap, [topic])
    await send_events(producer, [*events[:100], redelivered, bad, *events[100:]])  # all before the runner starts
    await runner.start()
    try:
        async def applied() -> list[dict[str, Any]]:
            async with db.connection() as conn:
                cur = await conn.execute("SELECT event_id, version FROM effects WHERE model = %s ORDER BY id", (model,))
                rows = await cur.fetchall()
            return rows if len(rows) >= 200 else []
        rows = await eventually(applied, what="200 applied events")
        assert sorted(r["version"] for r in rows) == list(range(1, 201))  # each once; the bad one never
        assert max(batch_sizes) > 1  # really applied in batches
        dead = await read_records(infra.kafka_bootstrap, topic.dlq, until=lambda rs: len(rs) >= 1)
        assert [header(r, "ce_id") for r in dead] == [bad.id]
        assert "cannot handle" in header(dead[0], "dlq_error")
    finally:
        await runner.stop()
        await db.close()


async def test_outbox_holds_rows_until_their_time_and_withdraws_unsent_ones(infra, unique: str) -> None:  # type: ignore[no-untyped-def]
    """A change that can still be undone (the review app's decisions) writes its events held (`not_before`);
    the relay leaves them until then, and `withdraw` takes back what was not sent, never what was."""
    db = await Database(infra.database_url, f"outbox_hold_{unique}").open()
    topic = Topic(f"test.outbox.hold.{unique}", models_pb2.ModelPromoted, "model name", 1)
    await ensure_topics(infra.kafka_bootstrap, [topic], dead_letters=False)
    held, taken_back, immediate = (promoted(topic, "m", v) for v in (1, 2, 3))
    later = datetime.now(UTC) + timedelta(hours=1)
    async with db.connection() as conn, conn.transaction():
        await enqueue(conn, held, not_before=later)
        await enqueue(conn, taken_back, not_before=later)
        await enqueue(conn, immediate)
    relay = OutboxRelay(db, infra.kafka_bootstrap, client_id=f"tests-outbox-hold-{unique}", poll_interval=0.1)
    await relay.start()
    try:
        await eventually(lambda: scalar(db, "SELECT sent_at IS NOT NULL FROM outbox WHERE event_id = %s", immediate.id),
                         what="the row without a hold sent")
        assert await scalar(db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 2  # the held ones wait
        async with db.connection() as conn, conn.transaction():
            assert await withdraw(conn, [taken_back.id]) == 1
            assert await withdraw(conn, [immediate.id]) == 0  # sent: it stands
        async with db.connection() as conn:  # the hold ends
            await conn.execute("UPDATE outbox SET not_before = now() WHERE event_id = %s", (held.id,))
        relay.wake()
        records = await read_records(infra.kafka_bootstrap, topic.name,
                                     until=lambda rs: {header(r, "ce_id") for r in rs} >= {held.id, immediate.id})
    finally:
        await relay.stop()
        await db.close()
    # In id order the withdrawn row came before the held one: had it gone out, it would be here.
    assert sorted(header(r, "ce_id") for r in records) == sorted([immediate.id, held.id])


async def test_an_outage_is_waited_out_not_dead_lettered(infra, producer, unique: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from flywheel.common.errors import Unavailable

    db = await Database(infra.database_url, f"outage_{unique}").open(effects_migrations(tmp_path / "m"))
    topic = Topic(f"test.outage.{unique}", models_pb2.ModelPromoted, "model name", 1)
    calls = Counter[str]()

    async def flaky_dependency(event: Event, conn: AsyncConnection) -> None:
        calls[event.id] += 1
        if calls[event.id] <= MAX_ATTEMPTS + 2:  # more failures than a bad event is allowed
            raise Unavailable("feature store unreachable")
        await conn.execute("INSERT INTO effects (event_id, model, version, attempt) VALUES (%s, %s, 1, %s)",
                           (event.id, f"outage-{unique}", calls[event.id]))

    runner = ConsumerRunner(bootstrap=infra.kafka_bootstrap, group=f"tests-outage-{unique}", db=db,
                            handlers={topic: flaky_dependency}, source="tests/outage", max_attempts=MAX_ATTEMPTS,
                            retry_backoff=0.01)
    event = promoted(topic, f"outage-{unique}")
    await ensure_topics(infra.kafka_bootstrap, [topic])
    await send_events(producer, [event])
    await runner.start()
    try:
        attempts = await eventually(lambda: scalar(db, "SELECT max(attempt) FROM effects"), what="applied after outage")
        assert attempts == MAX_ATTEMPTS + 3
        assert consumed(runner.group, topic, "dead_lettered") == 0
    finally:
        await runner.stop()
        await db.close()
