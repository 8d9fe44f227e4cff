"""Benchmark `review`: the review app's intake of reviews.requested (items/s into its queues, against a raw
aiokafka consumer decoding the same events) and its work API under 20 concurrent simulated reviewers (p50/p99
of claim-next and submit over HTTP, against GET /healthz on the same server at the same concurrency), checking
that nothing was lost or duplicated on the way: every event one item, every item labelled as often as it
needs, no item held by two reviewers at once (unless double labelled), every final decision one event on
feedback.received and one on reviews.completed.

The app runs in this process (ReviewApp, as the integration tests start it) and so do the simulated reviewers
(httpx, one connection each): client and server share one event loop and the machine's cores with PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import httpx
import psycopg
from aiokafka import AIOKafkaConsumer

from bench.common import BenchResult, Context, drop_schemas, markdown_table, percentile, ratio, rounded, thousands
from flywheel.common.auth import TokenStore
from flywheel.common.db import Database
from flywheel.common.events import Event
from flywheel.common.kafka import ensure_topics, new_producer, send_events
from flywheel.common.topics import FEEDBACK_RECEIVED, REVIEWS_COMPLETED, REVIEWS_REQUESTED
from flywheel.proto.events.v1 import common_pb2, reviews_pb2
from flywheel.review.config import ReviewSettings
from flywheel.review.main import ReviewApp

NAME = "review"
REVIEWERS = 20
# A share of the events is sent twice (a redelivery: same event id); none may become a second item.
REDELIVERED = 0.05


def review_request(queue: str, request_id: str, rows: int, row: int) -> Event:
    """Row `row` of a batched fraud prediction sampled for review, as the monitor sends it: the request's 9
    numeric and 1 categorical features, its 3 entity keys and its outputs, for `rows` rows."""
    ids = [f"{request_id}-t{i}" for i in range(rows)]
    request = reviews_pb2.ReviewRequested(
        review_id=f"{request_id}/{row}", request_id=request_id, model=common_pb2.ModelRef(name=queue, version=1),
        reason=reviews_pb2.REVIEW_REASON_LOW_CONFIDENCE, priority=1,
        inputs=[common_pb2.Tensor(name="numeric", datatype="FP32", shape=[rows, 9],
                                  fp_contents=[float(i * 9 + j) for i in range(rows) for j in range(9)]),
                common_pb2.Tensor(name="categorical", datatype="BYTES", shape=[rows, 1],
                                  bytes_contents=[b"grocery"] * rows),
                *(common_pb2.Tensor(name=key, datatype="BYTES", shape=[rows],
                                    bytes_contents=[f"{key}-{t}".encode() for t in ids])
                  for key in ("transaction_id", "customer_id", "merchant_id"))],
        outputs=[common_pb2.Tensor(name="probability", datatype="FP32", shape=[rows], fp_contents=[0.5] * rows),
                 common_pb2.Tensor(name="label", datatype="INT64", shape=[rows], int_contents=[1] * rows)],
        context={"row_index": str(row), "entity_id": ids[row], "probability": "0.500000"})
    request.requested_at.GetCurrentTime()
    request.event_time.GetCurrentTime()
    return Event(REVIEWS_REQUESTED, request_id, request, "bench")


async def reviewer_tokens(database_url: str, run_id: str, count: int) -> list[str]:
    store = TokenStore(Database(database_url, "auth", min_size=1, max_size=1))
    await store.db.pool.open(wait=True, timeout=30)
    try:
        return [(await store.create(f"bench-reviewer-{run_id}-{i}", ["reviewer"], created_by="make bench"))[0]
                for i in range(count)]
    finally:
        await store.db.close()


async def raw_peer(bootstrap: str, expected: int, group: str, queues: set[str]) -> tuple[float, int]:
    """Raw aiokafka consume + protobuf decode of the topic until `expected` of our events were seen; seconds from
    the first of ours to the last."""
    consumer = AIOKafkaConsumer(REVIEWS_REQUESTED.name, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=1000,
                                session_timeout_ms=10_000, rebalance_timeout_ms=3_000)
    await consumer.start()
    seen, first, last = 0, 0.0, 0.0
    try:
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for r in records:
                    if reviews_pb2.ReviewRequested.FromString(r.value).model.name in queues:
                        seen += 1
                        last = time.perf_counter()
                        first = first or last
            if batches:
                await consumer.commit()
        return last - first, seen
    finally:
        await consumer.stop()


async def count_items(conn: psycopg.AsyncConnection, schema: str, queues: list[str]) -> int:
    cur = await conn.execute(f"SELECT count(*) FROM {schema}.items WHERE queue = ANY(%s)", (queues,))
    return (await cur.fetchone())[0]


async def ingest(app: ReviewApp, schema: str, queues: list[str], expected: int, database_url: str) -> float:
    """Start the app and time its intake: from the first item of ours stored to the last."""
    await app.start()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        first = 0.0
        while True:
            stored = await count_items(conn, schema, queues)
            now = time.perf_counter()
            if stored and not first:
                first = now
            if stored >= expected:
                return now - first
            await asyncio.sleep(0.02)


async def work(url: str, queue: str, tokens: list[str],
               ) -> tuple[dict[str, list[float]], list[tuple[Any, ...]], float, float]:
    """Every reviewer claims and labels until the queue has nothing for it. Returns the latencies per call,
    what each reviewer held when ((item, reviewer, claimed, decided)), the wall seconds and the CPU seconds of
    this process (server and clients)."""
    latencies: dict[str, list[float]] = defaultdict(list)
    held: list[tuple[Any, ...]] = []

    async def reviewer(i: int, token: str) -> None:
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"},
                                     timeout=60) as http:
            while True:
                start = time.perf_counter()
                claimed = await http.post(f"/api/v1/queues/{queue}/claim")
                got = time.perf_counter()
                latencies["claim-next"].append(got - start)
                if claimed.status_code == 204:
                    return
                claimed.raise_for_status()
                item = claimed.json()["item"]
                label = "fraud" if (hash(item["id"]) + i) % 3 else "legit"
                decided = await http.post(f"/api/v1/items/{item['id']}/decision", json={"label": label})
                done = time.perf_counter()
                latencies["submit"].append(done - got)
                if decided.status_code != 201:
                    raise RuntimeError(f"submit refused: {decided.status_code} {decided.text}")
                held.append((item["id"], i, start, done))

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(reviewer(i, t) for i, t in enumerate(tokens)))
    return latencies, held, time.perf_counter() - wall, time.process_time() - cpu


async def floor(url: str, calls: int, callers: int) -> list[float]:
    """GET /healthz at the same concurrency: the HTTP round trip with no work behind it."""
    samples: list[float] = []

    async def caller(n: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for _ in range(n):
                start = time.perf_counter()
                (await http.get("/healthz")).raise_for_status()
                samples.append(time.perf_counter() - start)

    await asyncio.gather(*(caller(calls // callers) for _ in range(callers)))
    return samples


def overlaps(held: list[tuple[Any, ...]], needed: dict[str, int]) -> int:
    """Items held by more reviewers at once than the labels they need (claim to decision intervals)."""
    by_item: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for item, _, start, end in held:
        by_item[item].append((start, end))
    bad = 0
    for item, spans in by_item.items():
        events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
        at_once = peak = 0
        for _, step in events:
            at_once += step
            peak = max(peak, at_once)
        bad += peak > needed[item]
    return bad


async def published(bootstrap: str, request_ids: set[str], expected: dict[str, int], timeout: float = 120.0,
                    ) -> dict[str, tuple[int, int]]:
    """Per topic: (records about our requests, distinct event ids), read until `expected` distinct ids are in."""
    consumer = AIOKafkaConsumer(FEEDBACK_RECEIVED.name, REVIEWS_COMPLETED.name, bootstrap_servers=bootstrap,
                                group_id=None, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: dict[str, int] = defaultdict(int)
    ids: dict[str, set[str]] = defaultdict(set)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(len(ids[t]) < n for t, n in expected.items()):
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for r in batch:
                    if r.key.decode() in request_ids:
                        records[r.topic] += 1
                        ids[r.topic].add(dict(r.headers)["ce_id"].decode())
        # Anything sent twice would be right behind: read on until the topics are drained.
        while batches := await consumer.getmany(timeout_ms=1000):
            for batch in batches.values():
                for r in batch:
                    if r.key.decode() in request_ids:
                        records[r.topic] += 1
                        ids[r.topic].add(dict(r.headers)["ce_id"].decode())
        return {t: (records[t], len(ids[t])) for t in expected}
    finally:
        await consumer.stop()


def stats(samples: list[float]) -> dict[str, float]:
    return {"calls": len(samples), "p50_ms": rounded(percentile(samples, 50) * 1000),
            "p99_ms": rounded(percentile(samples, 99) * 1000), "mean_ms": rounded(sum(samples) / len(samples) * 1000)}


async def run(ctx: Context) -> BenchResult:
    n_ingest = 1_000 if ctx.quick else 5_000
    n_work = 300 if ctx.quick else 1_500
    ctx.steps.begin(NAME, 6)
    infra = ctx.infra
    schema = f"bench_review_{ctx.run_id}"
    ingest_queue, work_queue = f"bench-ingest-{ctx.run_id}", f"bench-work-{ctx.run_id}"
    queues = [ingest_queue, work_queue]
    with ctx.steps.step(f"produce {n_ingest + n_work:,} review requests (+{REDELIVERED:.0%} redelivered)"):
        await ensure_topics(infra.kafka_bootstrap, [REVIEWS_REQUESTED, FEEDBACK_RECEIVED, REVIEWS_COMPLETED])
        events = [review_request(ingest_queue, f"bi{i}-{ctx.run_id}", 20, i % 20) for i in range(n_ingest)]
        events += [review_request(work_queue, f"bw{i}-{ctx.run_id}", 20, i % 20) for i in range(n_work)]
        again = events[:: int(1 / REDELIVERED)]
        producer = new_producer(infra.kafka_bootstrap, client_id="bench")
        await producer.start()
        try:
            batch = events + again
            for i in range(0, len(batch), 1000):
                await send_events(producer, batch[i:i + 1000])
        finally:
            await producer.stop()
    expected_items = len(events)
    settings = ReviewSettings(
        kafka_bootstrap=infra.kafka_bootstrap, database_url=infra.database_url, home=infra.home, http_port=0,
        metrics_port=0, db_schema=schema, consumer_group=f"bench-review-{ctx.run_id}", registry_addr="",
        undo_seconds=0.0, lease_seconds=60.0, double_label_share=0.1, label_names={"*": ["legit", "fraud"]})
    app = ReviewApp(settings)
    try:
        with ctx.steps.step("raw aiokafka consume + decode (peer)"):
            raw_seconds, raw_seen = await raw_peer(infra.kafka_bootstrap, len(events) + len(again),
                                                   f"bench-review-raw-{ctx.run_id}", set(queues))
        with ctx.steps.step("review app intake (consumer group, batches into PostgreSQL)"):
            ingest_seconds = await ingest(app, schema, queues, expected_items, infra.database_url)
        async with await psycopg.AsyncConnection.connect(infra.database_url, autocommit=True) as conn:
            stored = await count_items(conn, schema, queues)
            needed = {r[0]: r[1] for r in await (await conn.execute(
                f"SELECT id, labels_needed FROM {schema}.items WHERE queue = %s", (work_queue,))).fetchall()}
        tokens = await reviewer_tokens(infra.database_url, ctx.run_id, REVIEWERS)
        with ctx.steps.step(f"{REVIEWERS} reviewers claim and label {n_work:,} items over HTTP"):
            latencies, held, work_seconds, work_cpu = await work(app.url, work_queue, tokens)
        with ctx.steps.step(f"GET /healthz floor, {REVIEWERS} callers"):
            health = await floor(app.url, len(latencies["claim-next"]), REVIEWERS)
        with ctx.steps.step("check: every item labelled as needed, every final decision published once"):
            async with await psycopg.AsyncConnection.connect(infra.database_url, autocommit=True) as conn:
                per_item = {r[0]: (r[1], r[2]) for r in await (await conn.execute(
                    f"SELECT i.id, count(d.id) FILTER (WHERE NOT d.resolution), count(DISTINCT d.reviewer)"
                    f" FROM {schema}.items i LEFT JOIN {schema}.decisions d ON d.item_id = i.id AND d.undone_at IS NULL"
                    f" WHERE i.queue = %s GROUP BY i.id", (work_queue,))).fetchall()}
                status = dict(await (await conn.execute(
                    f"SELECT status, count(*) FROM {schema}.items WHERE queue = %s GROUP BY status",
                    (work_queue,))).fetchall())
                finals = (await (await conn.execute(
                    f"SELECT count(*) FROM {schema}.items WHERE queue = %s AND final_decision_id IS NOT NULL",
                    (work_queue,))).fetchone())[0]
                request_ids = {r[0] for r in await (await conn.execute(
                    f"SELECT request_id FROM {schema}.items WHERE queue = %s", (work_queue,))).fetchall()}
            topics = await published(infra.kafka_bootstrap, request_ids,
                                     {FEEDBACK_RECEIVED.name: finals, REVIEWS_COMPLETED.name: finals})
    finally:
        await app.stop()
        await drop_schemas(infra.database_url, [schema])

    lost_labels = sum(1 for item, (labels, _) in per_item.items() if labels < needed[item])
    extra_labels = sum(1 for item, (labels, _) in per_item.items() if labels > needed[item])
    same_reviewer_twice = sum(1 for labels, reviewers in per_item.values() if reviewers < labels)
    shared = overlaps(held, needed)
    checks = {
        "events_produced": len(events), "events_redelivered": len(again), "items_stored": stored,
        "items_lost": expected_items - stored if stored < expected_items else 0,
        "items_duplicated": stored - expected_items if stored > expected_items else 0,
        "work_items": n_work, "double_labelled": sum(1 for n in needed.values() if n == 2),
        "labels_submitted": len(held), "labels_needed": sum(needed.values()), "items_missing_labels": lost_labels,
        "items_with_extra_labels": extra_labels, "items_labelled_twice_by_one_reviewer": same_reviewer_twice,
        "items_held_by_too_many_at_once": shared, "items_done": status.get("done", 0),
        "items_in_conflict": status.get("conflict", 0), "items_open": status.get("open", 0),
        "final_decisions": finals,
        **{f"{t}_records": records for t, (records, _) in topics.items()},
        **{f"{t}_distinct_events": distinct for t, (_, distinct) in topics.items()},
    }
    problems = [k for k in ("items_lost", "items_duplicated", "items_missing_labels", "items_with_extra_labels",
                            "items_labelled_twice_by_one_reviewer", "items_held_by_too_many_at_once", "items_open")
                if checks[k]]
    problems += [t for t, (records, distinct) in topics.items() if not records == distinct == finals]
    if problems:
        raise RuntimeError(f"nothing may be lost or duplicated, but: {problems}: {checks}")

    consumed = len(events) + len(again)  # both sides read every event, redeliveries included
    ingest_rate, raw_rate = consumed / ingest_seconds, raw_seen / raw_seconds
    claim, submit, healthz = stats(latencies["claim-next"]), stats(latencies["submit"]), stats(health)
    results = [
        {"case": "raw aiokafka consume + protobuf decode (peer)", "events": raw_seen, "seconds": rounded(raw_seconds),
         "per_s": rounded(raw_rate)},
        {"case": "review app intake: ConsumerRunner batch -> items in PostgreSQL", "events": consumed,
         "items": stored, "seconds": rounded(ingest_seconds), "per_s": rounded(ingest_rate),
         "items_per_s": rounded(stored / ingest_seconds)},
        {"case": "claim-next (POST /api/v1/queues/{q}/claim)", "callers": REVIEWERS, **claim},
        {"case": "submit (POST /api/v1/items/{id}/decision)", "callers": REVIEWERS, **submit},
        {"case": "GET /healthz (HTTP floor)", "callers": REVIEWERS, **healthz},
        {"case": "labels per second, 20 reviewers", "labels": len(held), "seconds": rounded(work_seconds),
         "per_s": rounded(len(held) / work_seconds), "process_cpu_seconds": rounded(work_cpu),
         "process_cpu_ms_per_request": rounded(work_cpu * 1000 / (len(latencies["claim-next"]) + len(held)))},
    ]
    ratios = {"intake_vs_raw_per_s": ratio(ingest_rate, raw_rate),
              "claim_p50/healthz_p50": ratio(claim["p50_ms"], healthz["p50_ms"]),
              "claim_p99/healthz_p99": ratio(claim["p99_ms"], healthz["p99_ms"]),
              "submit_p50/healthz_p50": ratio(submit["p50_ms"], healthz["p50_ms"]),
              "submit_p99/healthz_p99": ratio(submit["p99_ms"], healthz["p99_ms"])}
    intake_table = markdown_table(
        ["case", "events", "items", "seconds", "events/s", "items/s", "vs raw"],
        [[results[0]["case"], thousands(raw_seen), "", results[0]["seconds"], thousands(raw_rate), "", "1"],
         [results[1]["case"], thousands(consumed), thousands(stored), results[1]["seconds"], thousands(ingest_rate),
          thousands(stored / ingest_seconds), f"{ratios['intake_vs_raw_per_s']:.3f}"]], right=[1, 2, 3, 4, 5, 6])
    work_table = markdown_table(
        ["call", "callers", "calls", "p50 ms", "p99 ms", "p50 / healthz", "p99 / healthz"],
        [[r["case"], REVIEWERS, thousands(r["calls"]), r["p50_ms"], r["p99_ms"],
          f"{ratio(r['p50_ms'], healthz['p50_ms']):.2f}", f"{ratio(r['p99_ms'], healthz['p99_ms']):.2f}"]
         for r in results[2:5]], right=[1, 2, 3, 4, 5, 6])
    check_table = markdown_table(["check", "value"], [[k, thousands(v)] for k, v in checks.items()], right=[1])
    notes = (f"Intake: {len(events):,} ReviewRequested events (one row of a 20-row batched prediction each, as the "
             f"monitor samples them) plus {len(again):,} redelivered, read from the start by a new group, timed from "
             "the first item stored to the last (joining the group is excluded); the peer decodes the same events "
             "with no database. Work: 20 simulated reviewers (httpx, one connection each, bearer tokens) claim and "
             f"label until the queue is empty ({n_work:,} items, 10% double labelled, so two reviewers hold those); "
             "undo window 0 so events go out at once. App, reviewers and PostgreSQL share the machine's cores; "
             f"{len(held) / work_seconds:,.0f} labels/s overall, {results[5]['process_cpu_ms_per_request']} ms of this "
             "process's CPU per claim or submit (server and client together; PostgreSQL not included). Latencies "
             "grow with the machine's load (recorded above). One run, no repeats. Checks (all must hold or the "
             "benchmark fails): nothing lost or duplicated from event to item to label to published event.")
    return BenchResult(name=NAME, title="review: intake of reviews.requested and the work API under 20 reviewers",
                       results=results, ratios=ratios, notes=notes,
                       tables=[intake_table, work_table, check_table, notes], extra={"checks": checks})
