"""Benchmark `events`: publishing and consuming through Flywheel's plumbing vs raw aiokafka.

Every case moves the same N ModelPromoted events (~100-byte payload, CloudEvents headers)
through the same broker, on bench-only topics (`bench.<run>.*`) so no service reacts to them.

publish  raw AIOKafkaProducer (send in a loop + flush)      <- the peer
         BoundedPublisher.publish for each event + stop()    (drains until the broker acked all)
         outbox: enqueue in transactions of 500 rows while an OutboxRelay publishes them
         outbox relay alone, on N rows already in the table
consume  raw AIOKafkaConsumer in a group, commit per batch   <- the peer
         ConsumerRunner with a handler that inserts one row per event (a DB transaction per event)
         ConsumerRunner with a batch handler inserting the same rows (a DB transaction per fetched batch)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from psycopg import AsyncConnection, sql

from bench.common import (
    REPEATS,
    BenchResult,
    Context,
    delete_topics,
    drop_schemas,
    markdown_table,
    median,
    ratio,
    rounded,
    thousands,
)
from flywheel.common.db import Database
from flywheel.common.events import Event, Headers
from flywheel.common.kafka import BoundedPublisher, ConsumerRunner, ensure_topics
from flywheel.common.outbox import OutboxRelay, enqueue
from flywheel.common.topics import Topic
from flywheel.proto.events.v1 import models_pb2

NAME = "events"
SOURCE = "flywheel/bench"
OUTBOX_TX_ROWS = 500
# What flywheel.common.kafka.new_producer configures, so the raw peer differs only in the plumbing around it.
PRODUCER_OPTIONS: dict[str, Any] = {"acks": "all", "linger_ms": 5, "max_batch_size": 256 * 1024,
                                    "enable_idempotence": False, "request_timeout_ms": 10_000}
# What ConsumerRunner configures; the raw consumer uses the same group settings.
CONSUMER_OPTIONS: dict[str, Any] = {"enable_auto_commit": False, "auto_offset_reset": "earliest",
                                    "session_timeout_ms": 10_000, "heartbeat_interval_ms": 1_000,
                                    "rebalance_timeout_ms": 3_000, "max_poll_records": 500}
Record = tuple[bytes, bytes, Headers]


def promoted_event(topic: Topic, i: int) -> Event:
    """A realistic ModelPromoted fact (a ~100-byte payload)."""
    payload = models_pb2.ModelPromoted(
        model_name=f"fraud-scorer-{i % 8}", alias="champion", previous_version=i, version=i + 1,
        reason=models_pb2.PROMOTION_REASON_EVALUATION, evaluation_id=str(uuid.uuid4()), actor="flywheel/registry")
    payload.promoted_at.FromDatetime(datetime.now(UTC))
    return Event(topic, payload.model_name, payload, SOURCE)


def promoted_events(topic: Topic, n: int) -> list[Event]:
    return [promoted_event(topic, i) for i in range(n)]


# -- publish -----------------------------------------------------------------------------------


async def publish_raw(producer: AIOKafkaProducer, topic: str, records: Sequence[Record]) -> float:
    """Seconds to send pre-encoded records and flush until the broker acknowledged them all."""
    start = time.perf_counter()
    for key, value, headers in records:
        await producer.send(topic, value=value, key=key, headers=headers)
    await producer.flush()
    return time.perf_counter() - start


async def publish_bounded(bootstrap: str, events: Sequence[Event], warmup: Event) -> float:
    """Seconds from the first publish() to the end of stop(), which drains the queue to the broker."""
    # Sized for the burst: with the default 10,000 a tight loop of 20,000 publishes drops half by design.
    publisher = BoundedPublisher(bootstrap, name="bench", max_queue=len(events) + 1)
    await publisher.start()
    publisher.publish(warmup)  # the publisher connects lazily, on its first batch
    await publisher.queue.join()
    start = time.perf_counter()
    for event in events:
        publisher.publish(event)
    await publisher.stop(drain_timeout=600)
    elapsed = time.perf_counter() - start
    if publisher.dropped or not publisher.queue.empty():
        raise RuntimeError(f"BoundedPublisher dropped {publisher.dropped} events, {publisher.queue.qsize()} left")
    return elapsed


class TimedRelay(OutboxRelay):
    """An OutboxRelay that notes when it has published `target` rows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expect(1)

    def expect(self, target: int) -> None:
        self.target = target
        self.sent = 0
        self.last_sent_at = 0.0
        self.done = asyncio.Event()

    async def publish_pending(self) -> int:
        sent = await super().publish_pending()
        if sent:
            self.sent += sent
            self.last_sent_at = time.perf_counter()
            if self.sent >= self.target:
                self.done.set()
        return sent


async def enqueue_all(db: Database, events: Sequence[Event]) -> None:
    for start in range(0, len(events), OUTBOX_TX_ROWS):
        async with db.connection() as conn, conn.transaction():
            for event in events[start:start + OUTBOX_TX_ROWS]:
                await enqueue(conn, event)


async def outbox_end_to_end(db: Database, relay: TimedRelay, events: Sequence[Event]) -> tuple[float, float]:
    """(seconds to enqueue all, seconds from the first enqueue until the relay marked the last row sent)."""
    relay.expect(len(events))
    start = time.perf_counter()
    await enqueue_all(db, events)
    enqueued = time.perf_counter() - start
    await asyncio.wait_for(relay.done.wait(), 600)
    return enqueued, relay.last_sent_at - start


async def relay_only(db: Database, relay: OutboxRelay, event_ids: list[str]) -> float:
    """Mark the rows of `event_ids` unsent again, then time publish_pending() batches until all went out."""
    async with db.connection() as conn:
        await conn.execute("UPDATE outbox SET sent_at = NULL WHERE event_id = ANY(%s)", (event_ids,))
    sent = 0
    start = time.perf_counter()
    while sent < len(event_ids):
        batch = await relay.publish_pending()
        if not batch:
            raise RuntimeError(f"the relay found no unsent rows after {sent} of {len(event_ids)}")
        sent += batch
    return time.perf_counter() - start


# -- consume -----------------------------------------------------------------------------------


async def read_all(consumer: AIOKafkaConsumer, n: int) -> tuple[float, float]:
    """Read and commit n records; (seconds until the first record, seconds from it to the last commit)."""
    start = time.perf_counter()
    first = 0.0
    got = 0
    while got < n:
        batches = await consumer.getmany(timeout_ms=500)
        for tp, records in batches.items():
            if not first:
                first = time.perf_counter()
            got += len(records)
            await consumer.commit({tp: records[-1].offset + 1})
    if got != n:
        raise RuntimeError(f"read {got} records, expected {n}")
    return first - start, time.perf_counter() - first


async def wait_committed(consumer: AIOKafkaConsumer, n: int, timeout: float = 30.0) -> None:
    """Wait until the group committed offsets past all n records (every partition starts at offset 0)."""
    deadline = time.perf_counter() + timeout
    while True:
        offsets = [await consumer.committed(tp) or 0 for tp in consumer.assignment()]
        if sum(offsets) >= n:
            return
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the runner committed {sum(offsets)} of {n} offsets")
        await asyncio.sleep(0.05)


class PromotionsSeen:
    """An idempotent effect: one row per event (keyed by the event id), written in the runner's transaction.

    `one` is a ConsumerRunner handler (a transaction per event), `many` a batch handler (a transaction
    per fetched batch); both note when the n-th event was applied.
    """

    def __init__(self, table: str, n: int) -> None:
        self.insert = sql.SQL("INSERT INTO {} (event_id, model_name, alias, version) VALUES (%s, %s, %s, %s)").format(
            sql.Identifier(table))
        self.n = n
        self.count = 0
        self.first_at = 0.0
        self.done = asyncio.Event()

    @staticmethod
    def row(event: Event) -> tuple[str, str, str, int]:
        promoted: models_pb2.ModelPromoted = event.payload  # type: ignore[assignment]
        return event.id, promoted.model_name, promoted.alias, promoted.version

    async def one(self, event: Event, conn: AsyncConnection) -> None:
        self._started()
        await conn.execute(self.insert, self.row(event))
        self._applied(1)

    async def many(self, events: list[Event], conn: AsyncConnection) -> None:
        self._started()
        async with conn.cursor() as cur:
            await cur.executemany(self.insert, [self.row(e) for e in events])
        self._applied(len(events))

    def _started(self) -> None:
        if not self.first_at:
            self.first_at = time.perf_counter()

    def _applied(self, count: int) -> None:
        self.count += count
        if self.count >= self.n:
            self.done.set()


async def consume_runner(ctx: Context, db: Database, topic: Topic, n: int, *, batch: bool) -> tuple[float, float]:
    """(seconds until the first event, seconds from it to the n-th applied) for a fresh ConsumerRunner group."""
    mode = "batch" if batch else "single"
    table = f"promotions_seen_{mode}"
    async with db.connection() as conn:
        await conn.execute(sql.SQL("CREATE TABLE {} (event_id text PRIMARY KEY, model_name text NOT NULL,"
                                   " alias text NOT NULL, version bigint NOT NULL)").format(sql.Identifier(table)))
    effect = PromotionsSeen(table, n)
    group = f"bench-runner-{mode}-{ctx.run_id}"
    runner = (ConsumerRunner(bootstrap=ctx.infra.kafka_bootstrap, group=group, db=db,
                             batch_handlers={topic: effect.many}, source=SOURCE) if batch else
              ConsumerRunner(bootstrap=ctx.infra.kafka_bootstrap, group=group, db=db,
                             handlers={topic: effect.one}, source=SOURCE))
    start = time.perf_counter()
    await runner.start()
    try:
        await asyncio.wait_for(effect.done.wait(), 900)
        end = time.perf_counter()
        assert runner.consumer is not None
        await wait_committed(runner.consumer, n)  # stopping mid-commit would leave aiokafka's commit task failing
    finally:
        await runner.stop()
    async with db.connection() as conn:
        count = sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(table))
        row = await (await conn.execute(count)).fetchone()
    if row is None or row["n"] != n:
        raise RuntimeError(f"the {mode} handler stored {row and row['n']} rows, expected {n}")
    return effect.first_at - start, end - effect.first_at


# -- the benchmark -----------------------------------------------------------------------------


def measured(case: str, impl: str, label: str, n: int, runs: Sequence[float], **extra: Any) -> dict[str, Any]:
    """One result row: the median of `runs` (seconds for n events) and its rate."""
    seconds = median(runs)
    return {"case": case, "impl": impl, "label": label, "events": n, "runs_s": [rounded(r, 4) for r in runs],
            "seconds": rounded(seconds, 4), "events_per_s": rounded(n / seconds), **extra}


async def publish_cases(ctx: Context, topic: Topic, events: list[Event]) -> list[dict[str, Any]]:
    """The raw producer and BoundedPublisher, run alternately so drift hits both alike."""
    n, bootstrap, steps = len(events), ctx.infra.kafka_bootstrap, ctx.steps
    records = [e.encode() for e in events]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="bench-raw", **PRODUCER_OPTIONS)
    await producer.start()
    raw_runs: list[float] = []
    bounded_runs: list[float] = []
    try:
        await publish_raw(producer, topic.name, records[:500])  # warm-up
        for rep in range(1, REPEATS + 1):
            with steps.step(f"publish: raw AIOKafkaProducer, run {rep}/{REPEATS}"):
                raw_runs.append(await publish_raw(producer, topic.name, records))
            with steps.step(f"publish: BoundedPublisher, run {rep}/{REPEATS}"):
                bounded_runs.append(await publish_bounded(bootstrap, events, promoted_event(topic, -1)))
    finally:
        await producer.stop()
    raw = measured("publish", "raw", "raw AIOKafkaProducer: send() loop + flush", n, raw_runs)
    bounded = measured("publish", "bounded_publisher", "BoundedPublisher: publish() + stop() drain", n,
                       bounded_runs, dropped=0)
    steps.log(f"raw {thousands(raw['events_per_s'])}/s, BoundedPublisher {thousands(bounded['events_per_s'])}/s")
    return [raw, bounded]


async def outbox_cases(ctx: Context, db: Database, topic: Topic, n: int) -> list[dict[str, Any]]:
    """Enqueue -> relay sent with a running relay, then the relay alone on the same rows marked unsent."""
    steps = ctx.steps
    relay = TimedRelay(db, ctx.infra.kafka_bootstrap, client_id="bench-outbox")
    enqueue_runs: list[float] = []
    e2e_runs: list[float] = []
    events: list[Event] = []
    await relay.start()
    try:
        with steps.step("outbox: warm up the relay"):
            async with db.connection() as conn:
                await enqueue(conn, promoted_event(topic, -1))
            await asyncio.wait_for(relay.done.wait(), 60)
        for rep in range(1, REPEATS + 1):
            events = promoted_events(topic, n)  # new event ids: the outbox keys rows by them
            with steps.step(f"outbox: enqueue ({OUTBOX_TX_ROWS}/transaction) -> relay sent, run {rep}/{REPEATS}"):
                enqueued, total = await outbox_end_to_end(db, relay, events)
            enqueue_runs.append(enqueued)
            e2e_runs.append(total)
    finally:
        await relay.stop()

    relay_runs: list[float] = []
    bare_relay = OutboxRelay(db, ctx.infra.kafka_bootstrap, client_id="bench-outbox-relay-only")
    ids = [e.id for e in events]
    try:
        for rep in range(REPEATS + 1):
            with steps.step(f"outbox: relay only, run {rep}/{REPEATS}" if rep else "outbox: relay only, warm-up"):
                elapsed = await relay_only(db, bare_relay, ids)
            if rep:
                relay_runs.append(elapsed)
    finally:
        await bare_relay.stop()
    e2e = measured("publish", "outbox", f"outbox: enqueue {OUTBOX_TX_ROWS}/tx -> relay marked sent", n, e2e_runs)
    enqueue_only = measured("publish", "outbox_enqueue", f"outbox: enqueue only ({OUTBOX_TX_ROWS}/tx)", n,
                            enqueue_runs)
    alone = measured("publish", "outbox_relay", "outbox: relay only, rows already in the table", n, relay_runs)
    steps.log(f"outbox end to end {thousands(e2e['events_per_s'])}/s, relay alone {thousands(alone['events_per_s'])}/s")
    return [e2e, enqueue_only, alone]


async def consume_cases(ctx: Context, db: Database, topic: Topic, n: int) -> list[dict[str, Any]]:
    """N events on a topic of their own, read by a raw consumer (3 runs) and ConsumerRunners (1 run each)."""
    bootstrap, steps = ctx.infra.kafka_bootstrap, ctx.steps
    with steps.step(f"consume: fill {topic.name}"):
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="bench-fill", **PRODUCER_OPTIONS)
        await producer.start()
        try:
            await publish_raw(producer, topic.name, [e.encode() for e in promoted_events(topic, n)])
        finally:
            await producer.stop()

    consumer = AIOKafkaConsumer(topic.name, bootstrap_servers=bootstrap, group_id=f"bench-raw-{ctx.run_id}",
                                client_id="bench-raw", **CONSUMER_OPTIONS)
    raw_runs: list[float] = []
    try:
        with steps.step("consume: raw AIOKafkaConsumer joins its group, warm-up pass"):
            await consumer.start()
            raw_join, _ = await read_all(consumer, n)
        for rep in range(1, REPEATS + 1):
            with steps.step(f"consume: raw AIOKafkaConsumer, run {rep}/{REPEATS}"):
                await consumer.seek_to_beginning()
                raw_runs.append(sum(await read_all(consumer, n)))
    finally:
        await consumer.stop()
    raw = measured("consume", "raw", "raw AIOKafkaConsumer: getmany + commit per batch, no DB", n, raw_runs,
                   first_record_after_start_s=rounded(raw_join))

    with steps.step(f"consume: ConsumerRunner, a transaction per event ({n:,} events, one run)"):
        single_join, single_s = await consume_runner(ctx, db, topic, n, batch=False)
    single = measured("consume", "consumer_runner", "ConsumerRunner handler: event id + 1 row, 1 transaction/event",
                      n, [single_s], first_record_after_start_s=rounded(single_join))
    with steps.step(f"consume: ConsumerRunner batch handler, a transaction per fetched batch ({n:,} events, one run)"):
        batch_join, batch_s = await consume_runner(ctx, db, topic, n, batch=True)
    batch = measured("consume", "consumer_runner_batch",
                     "ConsumerRunner batch handler: event ids + rows, 1 transaction/fetched batch",
                     n, [batch_s], first_record_after_start_s=rounded(batch_join))
    steps.log(f"raw {thousands(raw['events_per_s'])}/s, ConsumerRunner {thousands(single['events_per_s'])}/s, "
              f"batch handler {thousands(batch['events_per_s'])}/s")
    return [raw, single, batch]


async def run(ctx: Context) -> BenchResult:
    n = 5_000 if ctx.quick else 20_000
    bootstrap = ctx.infra.kafka_bootstrap
    published = Topic(f"bench.{ctx.run_id}.published", models_pb2.ModelPromoted, "model name", 3)
    consumed = Topic(f"bench.{ctx.run_id}.consumed", models_pb2.ModelPromoted, "model name", 3)
    # set-up; publish 2 x runs; outbox warm-up + runs; relay warm-up + runs; fill; raw join + runs; 2 runners
    ctx.steps.begin(NAME, 1 + 2 * REPEATS + 1 + REPEATS + 1 + REPEATS + 1 + 1 + REPEATS + 2)
    outbox_db = Database(ctx.infra.database_url, f"bench_outbox_{ctx.run_id}")
    consume_db = Database(ctx.infra.database_url, f"bench_consume_{ctx.run_id}")
    try:
        with ctx.steps.step(f"set up topics and schemas, {n:,} events"):
            await ensure_topics(bootstrap, [published, consumed], dead_letters=False)
            await outbox_db.open()
            await consume_db.open()
            events = promoted_events(published, n)
        results = await publish_cases(ctx, published, events)
        results += await outbox_cases(ctx, outbox_db, published, n)
        results += await consume_cases(ctx, consume_db, consumed, n)
    finally:
        await outbox_db.close()
        await consume_db.close()
        await drop_schemas(ctx.infra.database_url, [outbox_db.schema, consume_db.schema])
        await delete_topics(bootstrap, [published.name, consumed.name, consumed.dlq])
    return report(results, n, payload_bytes=len(events[0].encode()[1]), partitions=published.partitions)


def report(results: list[dict[str, Any]], n: int, *, payload_bytes: int, partitions: int) -> BenchResult:
    by_impl = {(r["case"], r["impl"]): r["events_per_s"] for r in results}
    peers = {"publish": by_impl["publish", "raw"], "consume": by_impl["consume", "raw"]}
    ratios = {f"{case}.{impl}/raw": ratio(rate, peers[case]) for (case, impl), rate in by_impl.items()
              if impl != "raw"}
    table = markdown_table(
        ["case", "implementation", "events", "seconds", "events/s", "vs raw"],
        [[r["case"], r["label"], thousands(r["events"]), f"{r['seconds']:.3f}", thousands(r["events_per_s"]),
          f"{r['events_per_s'] / peers[r['case']]:.3f}"] for r in results],
        right=(2, 3, 4, 5))
    notes = (
        f"Payload: ModelPromoted, {payload_bytes} bytes, plus CloudEvents headers; key = model name; "
        f"{partitions} partitions. Producers: acks=all, linger 5 ms, no idempotence (as new_producer). "
        f"Median of {REPEATS} runs after a warm-up, except the ConsumerRunners (one run of {n:,} events each: "
        "they write them to the database). Flywheel timings include Event.encode/decode; the raw peers send "
        "and read the same pre-encoded bytes. BoundedPublisher's queue is sized to the burst (its default "
        "10,000 would drop the rest of a tight 20,000-event loop, by design). Outbox end to end runs from the "
        "first enqueue to the commit that marks the last row sent, with the relay running (woken by NOTIFY); "
        "relay only republishes the same rows marked unsent again. Consume times start at the first record "
        "(group join excluded, reported as first_record_after_start_s). A ConsumerRunner handler pays one "
        "database transaction per event (record the event id + the effect, commit): the price of exactly-once "
        "effects; a batch handler pays one per fetched batch (up to 500 events per partition); the raw consumer "
        "only reads bytes and commits offsets."
    )
    bullets = "\n".join([
        f"- {n:,} ModelPromoted events ({payload_bytes}-byte payload + CloudEvents headers); median of "
        f"{REPEATS} runs, ConsumerRunners one run each. `vs raw` = events/s divided by the raw aiokafka peer's.",
        "- Outbox end to end: first enqueue -> last row marked sent, relay running. Relay only: the same rows "
        "republished.",
        "- A ConsumerRunner handler commits a database transaction per event (event id + effect): exactly-once "
        "effects cost PostgreSQL round trips per event; a batch handler shares one transaction per fetched "
        "batch; the raw consumer touches no database.",
    ])
    return BenchResult(
        name=NAME, title="events: Flywheel event plumbing vs raw aiokafka", results=results, ratios=ratios,
        notes=notes, tables=[table, bullets],
        extra={"sizes": {"events": n, "payload_bytes": payload_bytes, "outbox_rows_per_transaction": OUTBOX_TX_ROWS}},
    )
