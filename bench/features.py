"""Benchmark `features`: online lookups of 100 entities through Flywheel's gRPC GetOnlineFeatures vs Feast's
own `FeatureStore.get_online_features` called in-process on the same repo and database (the peer).

The feature store runs in this process (FeatureStoreApp, as the integration tests start it) on the Feast
repo of tests/fixtures/feast_repo; the peer is a second Feast `FeatureStore` built from the same RepoConfig,
so both read the same registry and the same online table. Every call asks for the `customer_features`
service (4 features of one view) for a batch of 100 random customers out of N loaded ones.

Flywheel's path: client proto -> gRPC (loopback, same event loop) -> request checks -> Feast on a worker
thread -> Flywheel protos -> gRPC -> client. The peer's path: Feast's call, returning its OnlineResponse.
With 8 callers, Flywheel is called by 8 concurrent tasks and the peer by 8 threads.

Also reported, as context: loading the N rows through PushFeatures (offline table + online store, in
1,000-row requests) and through features.updates events (the consumer), vs Feast's own push of the same
rows to the online store only.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from feast import FeatureStore
from feast.data_source import PushMode
from psycopg import AsyncConnection, sql

from bench.common import (
    REPEATS,
    BenchResult,
    Context,
    drop_schemas,
    markdown_table,
    median,
    percentile,
    ratio,
    rounded,
    significant,
    thousands,
)
from flywheel.common import rpc
from flywheel.common.events import Event
from flywheel.common.kafka import new_producer, send_events, wait_assigned
from flywheel.common.topics import FEATURES_UPDATES
from flywheel.featurestore.config import FeatureStoreSettings
from flywheel.featurestore.main import FeatureStoreApp
from flywheel.proto.events.v1.features_pb2 import FeaturesUpdated, FeatureValue
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as pb
from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc as pb_grpc

NAME = "features"
REPO = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "feast_repo"
FEATURE_SERVICE = "customer_features"
BATCH = 100
CONCURRENCY = 8
PUSH_ROWS_PER_REQUEST = 1_000
WARMUP_CALLS = 100
CALL_TIMEOUT = 10.0
SEGMENTS = ("gold", "silver", "bronze")


def customer(i: int) -> str:
    return f"cust-{i:07d}"


def push_rows(start: int, end: int, when: datetime) -> list[pb.PushRow]:
    return [pb.PushRow(
        entity_keys={"customer_id": FeatureValue(string_value=customer(i))},
        values={"avg_amount_30d": FeatureValue(double_value=10 + i % 97), "txn_count_7d": FeatureValue(
            int64_value=i % 31), "segment": FeatureValue(string_value=SEGMENTS[i % 3]),
                "is_vip": FeatureValue(bool_value=i % 11 == 0)},
        event_time=_timestamp(when)) for i in range(start, end)]


def push_frame(start: int, end: int, when: datetime) -> pd.DataFrame:
    """The same rows as `push_rows`, as the dataframe Feast's push takes."""
    ids = range(start, end)
    return pd.DataFrame({
        "customer_id": [customer(i) for i in ids], "avg_amount_30d": [10.0 + i % 97 for i in ids],
        "txn_count_7d": [i % 31 for i in ids], "segment": [SEGMENTS[i % 3] for i in ids],
        "is_vip": [i % 11 == 0 for i in ids], "event_timestamp": pd.to_datetime([when] * len(ids), utc=True),
        "created": pd.to_datetime([when] * len(ids), utc=True)})


def _timestamp(when: datetime) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    out = Timestamp()
    out.FromDatetime(when)
    return out


async def load(ctx: Context, stub: pb_grpc.FeatureStoreServiceStub, peer: FeatureStore, n: int) -> dict[str, Any]:
    """Load N customers through PushFeatures; then push the same rows with Feast in-process (online only)."""
    when = datetime.now(UTC) - timedelta(minutes=1)
    with ctx.steps.step(f"load {n:,} customers through PushFeatures ({PUSH_ROWS_PER_REQUEST:,} rows per call)"):
        start = time.perf_counter()
        for first in range(0, n, PUSH_ROWS_PER_REQUEST):
            request = pb.PushFeaturesRequest(push_source="customer_profile_push",
                                             rows=push_rows(first, min(first + PUSH_ROWS_PER_REQUEST, n), when))
            await stub.PushFeatures(request, timeout=120)
        flywheel_s = time.perf_counter() - start
    with ctx.steps.step(f"push the same {n:,} rows with Feast in-process (online store only)"):
        frames = [push_frame(first, min(first + PUSH_ROWS_PER_REQUEST, n), when)
                  for first in range(0, n, PUSH_ROWS_PER_REQUEST)]
        start = time.perf_counter()
        for frame in frames:
            await asyncio.to_thread(peer.push, "customer_profile_push", frame, to=PushMode.ONLINE)
        feast_s = time.perf_counter() - start
    return {"rows": n, "push_features_rows_per_s": rounded(n / flywheel_s),
            "feast_push_online_rows_per_s": rounded(n / feast_s)}


async def ingest_events(ctx: Context, app: FeatureStoreApp, n: int) -> float:
    """Rows per second through features.updates: N events produced, until the consumer stored all of them."""
    when = datetime.now(UTC)
    events = []
    for i in range(n):
        payload = FeaturesUpdated(
            update_id=f"bench-{ctx.run_id}-{i}", push_source="customer_profile_push",
            entity_keys={"customer_id": customer(i)}, values=dict(push_rows(i, i + 1, when)[0].values))
        payload.event_time.CopyFrom(_timestamp(when))
        events.append(Event(FEATURES_UPDATES, customer(i), payload, "flywheel/bench"))
    producer = new_producer(ctx.infra.kafka_bootstrap, client_id=f"bench-features-{ctx.run_id}")
    await producer.start()
    table = sql.Identifier(app.settings.db_schema, "customer_profile_source")
    try:
        async with await AsyncConnection.connect(ctx.infra.database_url, autocommit=True) as conn:
            before = (await (await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table))).fetchone())[0]
            with ctx.steps.step(f"{n:,} features.updates events -> the consumer (offline table + online store)"):
                start = time.perf_counter()
                await send_events(producer, events)
                while True:
                    cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
                    if (await cur.fetchone())[0] >= before + n:
                        break
                    await asyncio.sleep(0.02)
                return rounded(n / (time.perf_counter() - start))
    finally:
        await producer.stop()


async def latencies(call: Callable[[], Awaitable[Any]], calls: int, callers: int) -> tuple[list[float], float]:
    """(per-call seconds, wall seconds) for `calls` calls made by `callers` concurrent tasks."""
    samples: list[float] = []

    async def caller(count: int) -> None:
        for _ in range(count):
            start = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller(calls // callers) for _ in range(callers)))
    return samples, time.perf_counter() - start


def thread_latencies(call: Callable[[], Any], calls: int, callers: int) -> tuple[list[float], float]:
    """The same, for a blocking call made by `callers` threads."""
    samples: list[float] = []

    def caller(count: int) -> None:
        for _ in range(count):
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(caller, [calls // callers] * callers))
    return samples, time.perf_counter() - start


async def lookup_cases(ctx: Context, stub: pb_grpc.FeatureStoreServiceStub, peer: FeatureStore, n: int,
                       calls: int) -> list[dict[str, Any]]:
    rng = random.Random(42)
    batches = [rng.sample(range(n), BATCH) for _ in range(64)]
    requests = [pb.GetOnlineFeaturesRequest(
        features=pb.FeatureSelection(feature_service=FEATURE_SERVICE),
        entity_rows=[pb.EntityRow(keys={"customer_id": FeatureValue(string_value=customer(i))}) for i in batch])
        for batch in batches]
    columns = [{"customer_id": [customer(i) for i in batch]} for batch in batches]
    service = peer.get_feature_service(FEATURE_SERVICE)
    counter = {"flywheel": 0, "feast": 0}

    async def flywheel_call() -> None:
        counter["flywheel"] += 1
        response = await stub.GetOnlineFeatures(requests[counter["flywheel"] % len(requests)], timeout=CALL_TIMEOUT)
        if len(response.rows) != BATCH or response.rows[0].statuses[0] != pb.FEATURE_STATUS_PRESENT:
            raise RuntimeError("GetOnlineFeatures did not return the loaded values")

    def feast_call() -> None:
        counter["feast"] += 1
        response = peer.get_online_features(features=service, entity_rows=columns[counter["feast"] % len(columns)],
                                            full_feature_names=True)
        if len(response.proto.results[0].values) != BATCH:
            raise RuntimeError("Feast did not return a value per entity")

    with ctx.steps.step(f"warm up: {WARMUP_CALLS} lookups each"):
        await latencies(flywheel_call, WARMUP_CALLS, 1)
        thread_latencies(feast_call, WARMUP_CALLS, 1)
    runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for rep in range(1, REPEATS + 1):
        with ctx.steps.step(f"lookups of {BATCH}: {calls:,} calls x (Flywheel gRPC, Feast in-process) x "
                            f"(1, {CONCURRENCY} callers), run {rep}/{REPEATS}"):
            for callers in (1, CONCURRENCY):
                samples, wall = await latencies(flywheel_call, calls, callers)
                runs.setdefault(("Flywheel GetOnlineFeatures (gRPC)", callers), []).append(
                    (percentile(samples, 50), percentile(samples, 99), len(samples) / wall))
                samples, wall = await asyncio.to_thread(thread_latencies, feast_call, calls, callers)
                runs.setdefault(("Feast get_online_features (in-process)", callers), []).append(
                    (percentile(samples, 50), percentile(samples, 99), len(samples) / wall))
    rows = []
    for (label, callers), measured in runs.items():
        rows.append({"call": label, "callers": callers, "calls": calls, "entities_per_call": BATCH,
                     "p50_ms": rounded(median([m[0] for m in measured]) * 1e3),
                     "p99_ms": rounded(median([m[1] for m in measured]) * 1e3),
                     "calls_per_s": rounded(median([m[2] for m in measured])),
                     "runs": [{"p50_ms": rounded(m[0] * 1e3), "p99_ms": rounded(m[1] * 1e3),
                               "calls_per_s": rounded(m[2])} for m in measured]})
    return rows


async def run(ctx: Context) -> BenchResult:
    n = 2_000 if ctx.quick else 10_000
    calls = 400 if ctx.quick else 2_000
    ctx.steps.begin(NAME, 1 + 3 + 1 + REPEATS)
    settings = FeatureStoreSettings(
        kafka_bootstrap=ctx.infra.kafka_bootstrap, database_url=ctx.infra.database_url, home=ctx.infra.home,
        grpc_port=0, metrics_port=0, db_schema=f"bench_features_{ctx.run_id}",
        consumer_group=f"bench-features-{ctx.run_id}", repo=str(REPO), log_json=False)
    app = FeatureStoreApp(settings)
    try:
        with ctx.steps.step("start the feature store in-process (apply the Feast repo, consumer group, gRPC)"):
            await app.start()
        peer = FeatureStore(config=app.features.config)
        async with rpc.channel(app.address, default_timeout=CALL_TIMEOUT, auth=ctx.infra.auth()) as channel:
            stub = pb_grpc.FeatureStoreServiceStub(channel)
            await wait_assigned(app.consumer)
            loading = await load(ctx, stub, peer, n)
            loading["events_rows_per_s"] = await ingest_events(ctx, app, n)
            lookups = await lookup_cases(ctx, stub, peer, n, calls)
    finally:
        await app.stop()
        await drop_schemas(ctx.infra.database_url, [settings.db_schema])
    return report(lookups, loading, n=n, calls=calls)


def report(lookups: list[dict[str, Any]], loading: dict[str, Any], *, n: int, calls: int) -> BenchResult:
    by = {(r["call"].split()[0], r["callers"]): r for r in lookups}
    ratios: dict[str, float] = {}
    for callers in (1, CONCURRENCY):
        ours, theirs = by[("Flywheel", callers)], by[("Feast", callers)]
        ratios[f"flywheel_p50/feast_p50_{callers}_callers"] = ratio(ours["p50_ms"], theirs["p50_ms"])
        ratios[f"flywheel_p99/feast_p99_{callers}_callers"] = ratio(ours["p99_ms"], theirs["p99_ms"])
        ratios[f"flywheel_calls_per_s/feast_{callers}_callers"] = ratio(ours["calls_per_s"], theirs["calls_per_s"])
    for key in ("push_features", "events"):
        ratios[f"{key}_rows_per_s/feast_push_online"] = ratio(loading[f"{key}_rows_per_s"],
                                                              loading["feast_push_online_rows_per_s"])
    lookup_table = markdown_table(
        ["call (100 entities x 4 features)", "callers", "p50 ms", "p99 ms", "calls/s", "entities/s",
         "p50 / Feast", "calls/s / Feast"],
        [[r["call"], r["callers"], significant(r["p50_ms"]), significant(r["p99_ms"]), thousands(r["calls_per_s"]),
          thousands(r["calls_per_s"] * BATCH),
          f"{r['p50_ms'] / by[('Feast', r['callers'])]['p50_ms']:.2f}",
          f"{r['calls_per_s'] / by[('Feast', r['callers'])]['calls_per_s']:.2f}"]
         for r in sorted(lookups, key=lambda r: (r["callers"], not r["call"].startswith("Flywheel")))],
        right=range(1, 8))
    load_table = markdown_table(
        ["load N rows", "rows", "rows/s", "vs Feast push"],
        [["Flywheel PushFeatures (offline table + online store)", thousands(n),
          thousands(loading["push_features_rows_per_s"]),
          f"{ratios['push_features_rows_per_s/feast_push_online']:.2f}"],
         ["Flywheel features.updates events (produce -> consumed: offline table + online store)", thousands(n),
          thousands(loading["events_rows_per_s"]), f"{ratios['events_rows_per_s/feast_push_online']:.2f}"],
         ["Feast push, PushMode.ONLINE (online store only)", thousands(n),
          thousands(loading["feast_push_online_rows_per_s"]), "1.00"]],
        right=range(1, 4))
    notes = (
        f"{calls:,} lookups per run and target ({CONCURRENCY} callers split them), each of {BATCH} random customers "
        f"out of {n:,} loaded, feature service {FEATURE_SERVICE} (4 features, one view); median of {REPEATS} "
        f"interleaved runs of p50/p99/calls per second, after {WARMUP_CALLS} warm-up calls each. Flywheel: "
        "GetOnlineFeatures over a loopback gRPC channel (flywheel.common.rpc.channel: deadline + tracing "
        "interceptors) to the feature store running in this process (client and server share one event loop "
        "and the GIL; the server runs Feast on 4 worker threads). Peer: feast.FeatureStore.get_online_features "
        "(columnar entity rows, full feature names) in this process on the same RepoConfig (same SQL registry, "
        "same online table), from 1 or 8 threads; it returns Feast's OnlineResponse without converting values. "
        "Load: PushFeatures appends each row to the offline source table (COPY) and upserts the online store "
        "through Feast's push in one transaction; the peer is Feast's push of the same dataframes to the online "
        "store only (Feast's PostgreSQL offline store cannot be written by push). Events: N FeaturesUpdated "
        "events for the same customers, timed from the first send until the consumer (ConsumerRunner batch "
        "handler: one transaction and one Feast push per fetched batch) stored the last one."
    )
    return BenchResult(
        name=NAME, title="features: online lookups of 100 entities, Flywheel gRPC vs Feast in-process",
        results=[{"kind": "lookup", **r} for r in lookups] + [{"kind": "load", **loading}],
        ratios=ratios, notes=notes, tables=[lookup_table, load_table],
        extra={"entities_loaded": n, "batch": BATCH, "feature_service": FEATURE_SERVICE},
    )


def main() -> int:
    """`python -m bench.features`: this benchmark alone (same as `python -m bench --only features`)."""
    from bench.__main__ import main as bench_main

    return bench_main(["--only", NAME])


if __name__ == "__main__":
    raise SystemExit(main())
