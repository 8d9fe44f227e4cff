"""Benchmark `monitor`: ingest throughput of the monitor's faust stream (prediction rows into windows
in PostgreSQL, one transaction per batch) vs a raw aiokafka consumer decoding the same events.

Both read the same pre-produced `predictions.logged` events (20 rows each, 8 numeric + 2
categorical features). Rows/s per core divides by the CPU seconds this Python process used while
it ingested (PostgreSQL's CPU, a separate process, is not included: noted in the table).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import numpy as np
import psycopg
from aiokafka import AIOKafkaConsumer

from bench.common import BenchResult, Context, drop_schemas, markdown_table, rounded, thousands
from flywheel.common.db import Database
from flywheel.common.events import Event
from flywheel.common.kafka import ensure_topics, new_producer, send_events
from flywheel.common.topics import PREDICTIONS_LOGGED
from flywheel.monitor.config import MonitorSettings
from flywheel.monitor.handlers import DeadLetters, MonitorStream
from flywheel.monitor.ingest import Ingest
from flywheel.monitor.main import MIGRATIONS
from flywheel.proto.events.v1 import common_pb2, predictions_pb2

NAME = "monitor"
ROWS_PER_EVENT = 20


def events(model: str, n: int, seed: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.normal(size=(ROWS_PER_EVENT, 8))
        p = 1 / (1 + np.exp(-x[:, 0]))
        msg = predictions_pb2.PredictionLogged(
            request_id=str(uuid.uuid4()), model=common_pb2.ModelRef(name=model, version=1),
            arm=predictions_pb2.PREDICTION_ARM_CHAMPION, entity_ids=[uuid.uuid4().hex[:12] for _ in range(20)],
            inputs=[common_pb2.Tensor(name="numeric", datatype="FP32", shape=[20, 8], fp_contents=x.ravel()),
                    common_pb2.Tensor(name="categorical", datatype="BYTES", shape=[20, 2],
                                      bytes_contents=[b"card", b"DE"] * 20)],
            outputs=[common_pb2.Tensor(name="probability", datatype="FP32", shape=[20], fp_contents=p),
                     common_pb2.Tensor(name="label", datatype="BOOL", shape=[20], bool_contents=p >= 0.5)])
        msg.timestamp.FromDatetime(datetime.now(UTC))
        out.append(Event(PREDICTIONS_LOGGED, msg.request_id, msg, "bench"))
    return out


async def raw_peer(bootstrap: str, expected_events: int, group: str) -> tuple[float, float, int]:
    """Raw aiokafka consume + protobuf decode + numpy view of the probabilities of every event."""
    consumer = AIOKafkaConsumer(PREDICTIONS_LOGGED.name, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=1000,
                                session_timeout_ms=10_000, rebalance_timeout_ms=3_000)
    await consumer.start()
    seen = rows = 0
    wall, cpu = time.perf_counter(), time.process_time()
    last_wall, last_cpu = wall, cpu
    try:
        # Until our events are in and one more second brings nothing (the topic may hold others' too).
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches and seen >= expected_events:
                break
            for records in batches.values():
                for r in records:
                    msg = predictions_pb2.PredictionLogged.FromString(r.value)
                    rows += len(np.asarray(msg.outputs[0].fp_contents, dtype=np.float32)) if msg.outputs else 0
                    seen += 1
            if batches:
                await consumer.commit()
                last_wall, last_cpu = time.perf_counter(), time.process_time()
        return last_wall - wall, last_cpu - cpu, rows
    finally:
        await consumer.stop()


async def monitor_ingest(ctx: Context, schema: str, expected_rows: int) -> tuple[float, float, int]:
    infra = ctx.infra
    settings = MonitorSettings(kafka_bootstrap=infra.kafka_bootstrap, database_url=infra.database_url,
                               home=infra.home, db_schema=schema, consumer_group=f"bench-{schema}",
                               batch_size=1000, window_size=500)
    db = Database(settings.database_url, schema)
    await db.open(MIGRATIONS)
    producer = new_producer(infra.kafka_bootstrap, client_id="bench-dlq")
    await producer.start()
    stream = MonitorStream(settings, db, Ingest(settings), DeadLetters(producer, settings.consumer_group))
    try:
        await stream.start()
        wall, cpu = time.perf_counter(), time.process_time()
        async with await psycopg.AsyncConnection.connect(infra.database_url, autocommit=True) as conn:
            while True:
                cur = await conn.execute(f"SELECT count(*) FROM {schema}.observations")
                rows = (await cur.fetchone())[0]
                if rows >= expected_rows:
                    break
                await asyncio.sleep(0.05)
        return time.perf_counter() - wall, time.process_time() - cpu, rows
    finally:
        await stream.stop()
        await producer.stop()
        await db.close()


async def run(ctx: Context) -> BenchResult:
    n_events = 1_000 if ctx.quick else 5_000
    ctx.steps.begin(NAME, 3)
    model = f"bench_{ctx.run_id}"
    schema = f"bench_monitor_{ctx.run_id}"
    with ctx.steps.step("produce"):
        await ensure_topics(ctx.infra.kafka_bootstrap, [PREDICTIONS_LOGGED])
        producer = new_producer(ctx.infra.kafka_bootstrap, client_id="bench")
        await producer.start()
        try:
            batch = events(model, n_events)
            for i in range(0, len(batch), 1000):
                await send_events(producer, batch[i:i + 1000])
        finally:
            await producer.stop()
    # Other benchmarks may have logged predictions too: both sides read the whole topic.
    try:
        with ctx.steps.step("raw aiokafka + decode"):
            raw_wall, raw_cpu, raw_rows = await raw_peer(ctx.infra.kafka_bootstrap, n_events, f"bench-raw-{ctx.run_id}")
        with ctx.steps.step("monitor ingest"):
            mon_wall, mon_cpu, mon_rows = await monitor_ingest(ctx, schema, raw_rows)
    finally:
        await drop_schemas(ctx.infra.database_url, [schema])
    results = [
        {"case": "raw aiokafka consume + protobuf decode (peer)", "rows": raw_rows, "seconds": rounded(raw_wall),
         "cpu_seconds": rounded(raw_cpu), "rows_per_s": rounded(raw_rows / raw_wall),
         "rows_per_cpu_s": rounded(raw_rows / max(raw_cpu, 1e-9))},
        {"case": "monitor: faust + decode + Postgres windows (1 tx per 1000 events)", "rows": mon_rows,
         "seconds": rounded(mon_wall), "cpu_seconds": rounded(mon_cpu), "rows_per_s": rounded(mon_rows / mon_wall),
         "rows_per_cpu_s": rounded(mon_rows / max(mon_cpu, 1e-9))},
    ]
    table = markdown_table(
        ["case", "rows", "wall s", "process CPU s", "rows/s", "rows per CPU-second"],
        [[r["case"], thousands(r["rows"]), r["seconds"], r["cpu_seconds"], thousands(r["rows_per_s"]),
          thousands(r["rows_per_cpu_s"])] for r in results], right=[1, 2, 3, 4, 5])
    notes = (f"{raw_rows // ROWS_PER_EVENT} events of {ROWS_PER_EVENT} rows on predictions.logged, "
             "read from the start by a new group. "
             "Per-core = rows / CPU seconds of this Python process while ingesting; PostgreSQL's CPU (unnest "
             "inserts; a separate process on the same cores) is not included. One run, no repeats.")
    return BenchResult(name=NAME, title="monitor: prediction rows into windows vs raw consume + decode",
                       results=results, ratios={"monitor_vs_raw_rows_per_s": rounded(
                           results[1]["rows_per_s"] / results[0]["rows_per_s"])},
                       notes=notes, tables=[table, notes])
