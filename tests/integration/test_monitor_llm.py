"""Online scoring of live LLM answers on the real broker and database, with the monitor in-process: good
answers grounded in their prompt make the reference, a window of ungrounded answers that leak PII (and got
thumbs down) raises one drift.detected, one retrain.requests for the application and review samples; evaluation
traffic is ignored, and a replay changes nothing."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial

import grpc
import pytest

from flywheel.common import rpc
from flywheel.common.db import Database
from flywheel.common.events import Event
from flywheel.common.kafka import send_events
from flywheel.common.redaction import redact
from flywheel.common.topics import FEEDBACK_RECEIVED, PREDICTIONS_LOGGED
from flywheel.monitor.config import MonitorSettings
from flywheel.monitor.llm import OnlineScoring
from flywheel.monitor.main import MIGRATIONS, MonitorApp
from flywheel.proto.events.v1 import common_pb2, models_pb2, monitoring_pb2, predictions_pb2, reviews_pb2
from flywheel.proto.monitor.v1 import monitor_service_pb2 as pb
from flywheel.proto.monitor.v1 import monitor_service_pb2_grpc as pb_grpc
from tests import polling
from tests.kafka_helpers import consumed_through, end_offsets, header, read_records
from tests.service_helpers import shared_settings

eventually = partial(polling.eventually, timeout=90.0)
WINDOW = 20
FACTS = [("monthly account fee", "$5"), ("card replacement fee", "$10"), ("foreign transaction fee", "3%"),
         ("overdraft fee", "$25"), ("wire transfer fee", "$15")]


def prompt_for(i: int) -> str:
    """A rendered prompt as inference logs it: chat template, the passages retrieved, the question."""
    name, value = FACTS[i % len(FACTS)]
    return ("<|im_start|>system\nYou are Northwind Assist.<|im_end|>\n<|im_start|>user\nPassages from Northwind "
            f"Bank's documents:\n\n[1] Fees\nThe {name} is {value} per occurrence, charged to the account.\n\n"
            f"Customer question: What is the {name}?<|im_end|>\n<|im_start|>assistant\n")


def generation(application: str, model: str, i: int, *, good: bool,
               arm: int = predictions_pb2.PREDICTION_ARM_CHAMPION) -> Event:
    name, value = FACTS[i % len(FACTS)]
    if good:
        completion = f"The {name} is {value} per occurrence [1]."
    else:  # made up, and PII the model should never have written (the log is redacted: placeholders remain)
        completion = redact(f"Premium members never pay it and get lounge access at airports. Regards, Jane Smith, "
                            f"jane.smith{i}@example.com.").text
    message = predictions_pb2.PredictionLogged(
        request_id=str(uuid.uuid4()), model=common_pb2.ModelRef(name=model, version=1), arm=arm,
        llm=predictions_pb2.LlmExchange(
            application=application, prompt=prompt_for(i), completion=completion, finish_reason="stop",
            context_chunk_ids=[f"chunk-{i % len(FACTS)}"],
            messages=[predictions_pb2.ChatMessage(role="user", content=f"What is the {name}?")],
            prompt_template=common_pb2.ModelRef(name=f"{application}-prompt", version=1)))
    message.timestamp.FromDatetime(datetime.now(UTC))
    return Event(PREDICTIONS_LOGGED, message.request_id, message, "tests")


def thumbs_down(request_id: str) -> Event:
    fb = predictions_pb2.FeedbackReceived(feedback_id=str(uuid.uuid4()), request_id=request_id,
                                          source=predictions_pb2.FEEDBACK_SOURCE_END_USER,
                                          label=common_pb2.Label(text="thumbs_down"))
    return Event(FEEDBACK_RECEIVED, request_id, fb, "tests")


async def outbox_ids(app: MonitorApp, topic: str, keys: list[str]) -> list[str]:
    """Event ids the monitor wrote to its outbox for `topic` with one of these keys (its record of what it emitted)."""
    async with app.db.connection() as conn:
        rows = await (await conn.execute("SELECT event_id FROM outbox WHERE topic = %s AND key = ANY(%s) ORDER BY id",
                                         (topic, keys))).fetchall()
    return [r["event_id"] for r in rows]


async def published(infra, topic: str, ids: list[str]) -> list:  # type: ignore[no-untyped-def]
    wanted = set(ids)
    records = await read_records(infra.kafka_bootstrap, topic, timeout=120,
                                 until=lambda rs: wanted <= {header(r, "ce_id") for r in rs})
    return [r for r in records if header(r, "ce_id") in wanted]


async def test_quality_drop_alerts_retrains_and_samples_reviews(infra, registry_app, producer, unique):  # type: ignore[no-untyped-def]
    application, model = f"assist-{unique}", f"smol-{unique}"
    settings = MonitorSettings(**shared_settings(infra), db_schema=f"monitor_llm_{unique}",
                               consumer_group=f"monitor-llm-{unique}", registry_addr=registry_app.address,
                               llm_window_size=WINDOW, llm_window_seconds=0, llm_review_samples=3,
                               analysis_poll_seconds=0.2)
    app = MonitorApp(settings)
    await app.start()
    try:
        async with rpc.channel(app.address, auth=infra.tokens.auth("reader")) as channel:
            stub = pb_grpc.MonitorServiceStub(channel)

            async def closed(count: int) -> list[pb.LlmWindow] | None:
                try:
                    response = await stub.ListLlmWindows(pb.ListLlmWindowsRequest(application=application))
                except Exception:  # NOT_FOUND until the first answer is scored
                    return None
                done = sorted((w for w in response.windows if w.closed), key=lambda w: w.sequence)
                return done if len(done) >= count else None

            # Two windows of good answers (the reference, then one judged fine), with evaluation and shadow
            # traffic of bad answers mixed in: neither reaches users, neither is scored.
            good = [generation(application, model, i, good=True) for i in range(2 * WINDOW)]
            ignored = [generation(application, model, i, good=False, arm=arm) for i, arm in enumerate(
                [predictions_pb2.PREDICTION_ARM_EVALUATION] * 4 + [predictions_pb2.PREDICTION_ARM_SHADOW])]
            await send_events(producer, ignored + good)
            windows = await eventually(lambda: closed(2), what="two closed windows of good answers")
            assert [w.is_reference for w in windows] == [True, False]
            assert not windows[1].degraded and windows[1].checks
            assert windows[0].scores["groundedness"] == 1.0 and windows[0].scores["pii_leak_rate"] == 0.0
            assert windows[1].reference["groundedness"] == 1.0

            # Thumbs down on some answers first (feedback may come before its answer is scored), then a window
            # of made-up answers with PII in them.
            bad = [generation(application, model, i, good=False) for i in range(WINDOW)]
            bad_ids = [e.payload.request_id for e in bad]
            await send_events(producer, [thumbs_down(r) for r in bad_ids[:8]])

            async def feedback_stored() -> bool:
                async with app.db.connection() as conn:
                    row = await (await conn.execute("SELECT count(*) AS n FROM llm_feedback WHERE request_id = "
                                                    "ANY(%s)", (bad_ids,))).fetchone()
                return row is not None and row["n"] == 8
            await eventually(feedback_stored, what="the thumbs down stored")
            await send_events(producer, bad)
            windows = await eventually(lambda: closed(3), what="the window of bad answers closed")
            degraded = windows[2]
            assert degraded.degraded and degraded.drift_event_id and degraded.retrain_request_id
            assert {c.metric for c in degraded.checks if c.degraded} == {
                "groundedness", "pii_leak_rate", "negative_feedback_rate"}
            assert degraded.scores["negative_feedback_rate"] == 8 / WINDOW

            # One alert for the application's model, with the LLM scores...
            [drift_id] = await outbox_ids(app, "drift.detected", [model])
            assert drift_id == degraded.drift_event_id
            [record] = await published(infra, "drift.detected", [drift_id])
            alert = monitoring_pb2.DriftDetected.FromString(record.value)
            assert alert.model == common_pb2.ModelRef(name=model, version=1)
            assert alert.window_id == degraded.window_id and alert.severity == monitoring_pb2.DRIFT_SEVERITY_CRITICAL
            assert alert.performance["pii_leak_rate"] == 1.0 and alert.performance["groundedness"] < 0.5
            assert alert.performance["reference_groundedness"] == 1.0
            assert {f.feature for f in alert.features if f.drifted} >= {"groundedness", "pii_leak_rate"}

            # ...a retrain request the fine-tuner takes (its application, an LLM kind, no parameters)...
            [retrain_id] = await outbox_ids(app, "retrain.requests", [application])
            [record] = await published(infra, "retrain.requests", [retrain_id])
            request = models_pb2.RetrainRequested.FromString(record.value)
            assert request.model_name == application and request.kind == common_pb2.MODEL_KIND_LORA_ADAPTER
            assert request.drift_event_id == drift_id and not request.parameters
            assert request.parent == common_pb2.ModelRef(name=model, version=1)

            # ...and the worst answers to review, with their exchange.
            review_ids = await outbox_ids(app, "reviews.requested", bad_ids)
            assert len(review_ids) == 3
            reviews = [reviews_pb2.ReviewRequested.FromString(r.value)
                       for r in await published(infra, "reviews.requested", review_ids)]
            assert all(r.reason == reviews_pb2.REVIEW_REASON_DRIFT_SAMPLE and r.request_id in bad_ids
                       and r.llm.application == application and r.model.name == application
                       and "[EMAIL]" in r.llm.completion and r.prompt.name == f"{application}-prompt"
                       and r.context["drift_id"] == drift_id
                       for r in reviews)

            # A replay of everything changes nothing: no answer scored twice, no new window, no second alert.
            await send_events(producer, ignored + good + bad)
            ends = await end_offsets(infra.kafka_bootstrap, PREDICTIONS_LOGGED.name)
            await consumed_through(infra.kafka_bootstrap, settings.consumer_group, PREDICTIONS_LOGGED.name, ends,
                                   timeout=120)
            response = await stub.ListLlmWindows(pb.ListLlmWindowsRequest(application=application))
            assert sorted(w.generations for w in response.windows) == [WINDOW] * 3
            assert all(w.closed for w in response.windows)
            assert response.champion == common_pb2.ModelRef(name=model, version=1)
            assert await outbox_ids(app, "drift.detected", [model]) == [drift_id]
            assert await outbox_ids(app, "reviews.requested", bad_ids) == review_ids
            async with app.db.connection() as conn:
                row = await (await conn.execute("SELECT count(*) AS n FROM llm_generations WHERE application = %s",
                                                (application,))).fetchone()
                assert row is not None and row["n"] == 3 * WINDOW
                ignored_ids = [e.payload.request_id for e in ignored]
                row = await (await conn.execute("SELECT count(*) AS n FROM llm_generations WHERE request_id = "
                                                "ANY(%s)", (ignored_ids,))).fetchone()
                assert row is not None and row["n"] == 0

            for request, code in ((pb.ListLlmWindowsRequest(), grpc.StatusCode.INVALID_ARGUMENT),
                                  (pb.ListLlmWindowsRequest(application=f"never-{unique}"), grpc.StatusCode.NOT_FOUND)):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ListLlmWindows(request)
                assert info.value.code() == code and info.value.details()

        # The CLI as a user runs it.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flywheel.common.cli", "monitor", "--address", app.address, "llm", application,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "FLYWHEEL_TOKEN": infra.tokens.reader})
        out = (await proc.communicate())[0].decode()
        assert proc.returncode == 0, out
        assert f"champion {model} v1" in out and "reference" in out and "degraded" in out
        assert degraded.drift_event_id[:8] in out, out
    finally:
        await app.stop()


async def test_reference_per_champion_age_close_and_cooldown(infra, unique):  # type: ignore[no-untyped-def]
    """Driving the scoring directly on the database: windows close by count and by age; a new champion closes
    the open window unjudged and gets a reference of its own; a second bad window within the cooldown does not
    alert again."""
    application = f"cool-{unique}"
    settings = MonitorSettings(kafka_bootstrap=infra.kafka_bootstrap, database_url=infra.database_url,
                               home=infra.home, db_schema=f"monitor_llm_direct_{unique}", llm_window_size=4,
                               llm_window_seconds=60, llm_min_window_generations=2, llm_min_scored=2,
                               llm_review_samples=1)
    scoring = OnlineScoring(settings)
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def answers(version: int, n: int, good: bool) -> list[Event]:
        events = [generation(application, "smol", i, good=good) for i in range(n)]
        for e in events:
            e.payload.model.version = version
        return events

    db = await Database(settings.database_url, settings.db_schema).open(MIGRATIONS)
    try:
        async def step(events: list[Event], minute: int) -> None:
            async with db.connection() as conn, conn.transaction():
                await scoring.predictions(conn, events, now=start + timedelta(minutes=minute))

        await step(answers(1, 4, True), 0)       # v1's reference
        await step(answers(1, 2, True), 1)       # an open window of 2...
        async with db.connection() as conn, conn.transaction():
            assert await scoring.close_overdue(conn, start + timedelta(minutes=1, seconds=59)) == 0
            assert await scoring.close_overdue(conn, start + timedelta(minutes=2, seconds=1)) == 1  # ...closed by age
        await step(answers(1, 1, True), 3)       # opens a window that v2's first answer closes unjudged
        await step(answers(2, 4, True), 4)       # v2's reference
        await step(answers(2, 4, False), 5)      # degraded: alert
        await step(answers(2, 4, False), 6)      # degraded again, within the cooldown: no alert
        async with db.connection() as conn:
            rows = await (await conn.execute(
                "SELECT sequence, state, model_version, epoch, generations, is_reference, degraded, drift_event_id "
                "FROM llm_windows ORDER BY sequence")).fetchall()
            outbox = await (await conn.execute("SELECT topic, count(*) AS n FROM outbox GROUP BY topic")).fetchall()
        assert [(r["model_version"], r["generations"], r["is_reference"], r["degraded"]) for r in rows] == [
            (1, 4, True, None), (1, 2, False, False), (1, 1, False, None), (2, 4, True, None), (2, 4, False, True),
            (2, 4, False, True)]
        assert [r["state"] for r in rows] == ["closed"] * 6
        assert [bool(r["drift_event_id"]) for r in rows] == [False] * 4 + [True, False]
        assert {r["topic"]: r["n"] for r in outbox} == {"drift.detected": 1, "retrain.requests": 1,
                                                        "reviews.requested": 1}
    finally:
        await db.close()
