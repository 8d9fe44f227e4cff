"""The monitor on the real broker, database and an in-process registry: windows, drift alerts with
their lineage, late labels, reviews, the dead-letter topic, restart without loss or double counts,
and gRPC status codes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial

import grpc
import numpy as np
import psycopg
import pytest

from flywheel.common import rpc
from flywheel.common.db import Database
from flywheel.common.events import Event
from flywheel.common.kafka import send_events
from flywheel.common.topics import FEEDBACK_RECEIVED, PREDICTIONS_LOGGED
from flywheel.monitor.config import MonitorSettings, ReviewPolicy
from flywheel.monitor.ingest import Ingest, close_overdue_time_windows
from flywheel.monitor.main import MIGRATIONS, MonitorApp
from flywheel.predictive.artifact import InputSchema, write_artifact
from flywheel.proto.events.v1 import common_pb2, models_pb2, monitoring_pb2, predictions_pb2, reviews_pb2
from flywheel.proto.monitor.v1 import monitor_service_pb2 as pb
from flywheel.proto.monitor.v1 import monitor_service_pb2_grpc as pb_grpc
from tests import polling
from tests.integration import registry_client
from tests.kafka_helpers import consumed_through, end_offsets, header, read_records
from tests.service_helpers import shared_settings

NUMERIC = ["x0", "x1", "x2"]
CATS = ["a", "b", "c"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def reference_artifact(name: str, rows: int = 2000, seed: int = 0) -> bytes:
    """A predictive artifact as the monitor reads it: model.json and a reference profile with a sample."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    c = rng.choice(CATS, size=rows)
    p = sigmoid(2 * x[:, 0])
    label = rng.random(rows) < p
    columns = {f: x[:, i].tolist() for i, f in enumerate(NUMERIC)}
    columns["c0"] = c.tolist()
    columns["label"] = label.tolist()
    columns["prediction"] = p.tolist()
    profile = {"format": "flywheel.reference_profile/v1", "rows": rows, "label_rate": float(label.mean()),
               "sample": {"rows": rows, "columns": columns}}
    # The monitor never scores: model.pt may be empty.
    return write_artifact(name=name, schema=InputSchema(NUMERIC, ["c0"], {"c0": list(CATS)}), model_pt=b"",
                          threshold=0.5, profile=profile, metadata={"metrics": {"roc_auc": 0.85}})


def prediction_events(name: str, version: int, n_events: int, rows: int, rng: np.random.Generator, *,
                      shift: float = 0.0, arm: int = predictions_pb2.PREDICTION_ARM_CHAMPION,
                      ) -> tuple[list[Event], list[tuple[str, str, bool]]]:
    """PredictionLogged events like inference logs them; returns them and (request, entity, true label).

    Keyed by the model, so they share one partition and the monitor's windows of 200 rows are the same rows on
    every run. Keyed by request id they spread over partitions, each window is whichever rows arrive first,
    and a stable window is a new sample each run: PSI over 200 rows drawn from the reference's own
    distribution reaches the 0.2 threshold in about 0.5% of samples, which over 3 windows x 4 features failed
    a run now and then."""
    events, truth = [], []
    for _ in range(n_events):
        x = rng.normal(size=(rows, 3)) + shift
        c = rng.choice(CATS, size=rows)
        p = sigmoid(2 * x[:, 0])
        request_id = str(uuid.uuid4())
        entities = [f"e-{uuid.uuid4().hex[:8]}" for _ in range(rows)]
        # After the shift the world changed: labels no longer follow the model's probability.
        y = rng.random(rows) < (p if shift == 0 else 0.5)
        msg = predictions_pb2.PredictionLogged(
            request_id=request_id, model=common_pb2.ModelRef(name=name, version=version), arm=arm,
            entity_ids=entities,
            inputs=[common_pb2.Tensor(name="numeric", datatype="FP32", shape=[rows, 3], fp_contents=x.ravel()),
                    common_pb2.Tensor(name="categorical", datatype="BYTES", shape=[rows, 1],
                                      bytes_contents=[v.encode() for v in c]),
                    common_pb2.Tensor(name="account_id", datatype="BYTES", shape=[rows],
                                      bytes_contents=[e.encode() for e in entities])],
            outputs=[common_pb2.Tensor(name="probability", datatype="FP32", shape=[rows], fp_contents=p),
                     common_pb2.Tensor(name="label", datatype="BOOL", shape=[rows], bool_contents=p >= 0.5)])
        msg.timestamp.FromDatetime(datetime.now(UTC))
        events.append(Event(PREDICTIONS_LOGGED, name, msg, "tests"))
        truth.extend((request_id, e, bool(v)) for e, v in zip(entities, y, strict=True))
    return events, truth


def feedback_events(name: str, truth: list[tuple[str, str, bool]],
                    source: int = predictions_pb2.FEEDBACK_SOURCE_GROUND_TRUTH) -> list[Event]:
    out = []
    for request_id, entity, y in truth:
        fb = predictions_pb2.FeedbackReceived(feedback_id=str(uuid.uuid4()), request_id=request_id, entity_id=entity,
                                              model=common_pb2.ModelRef(name=name), source=source,
                                              label=common_pb2.Label(flag=y))
        out.append(Event(FEEDBACK_RECEIVED, request_id, fb, "tests"))
    return out


def monitor_settings(infra, registry_app, suffix: str, **overrides) -> MonitorSettings:  # type: ignore[no-untyped-def]
    values = dict(**shared_settings(infra), db_schema=f"monitor_{suffix}", consumer_group=f"monitor-{suffix}",
                  registry_addr=registry_app.address, window_size=200, hysteresis_n=2, hysteresis_m=3,
                  cooldown_seconds=3600, retrain_min_labels=150, retrain_max_wait_seconds=3600,
                  analysis_poll_seconds=0.2, review_policy={"*": ReviewPolicy(band=0.05, rate=1.0, max_per_window=3)})
    values.update(overrides)
    return MonitorSettings(**values)


@pytest.fixture
async def monitor(infra, registry_app, unique) -> AsyncIterator[MonitorApp]:  # type: ignore[no-untyped-def]
    app = MonitorApp(monitor_settings(infra, registry_app, unique))
    await app.start()
    yield app
    await app.stop()


eventually = partial(polling.eventually, timeout=60.0)


async def emitted(app: MonitorApp, topic: str, key: str) -> list[str]:
    """The event ids the monitor emitted on `topic` with `key`: its outbox is the record (each event is
    written there in the transaction of the decision that caused it), whatever the broker has relayed yet."""
    async with app.db.connection() as conn:
        rows = await (await conn.execute("SELECT event_id FROM outbox WHERE topic = %s AND key = %s ORDER BY id",
                                         (topic, key))).fetchall()
    return [r["event_id"] for r in rows]


async def published(infra, topic: str, ids: list[str]) -> list:  # type: ignore[no-untyped-def]
    """The records of `topic` with these event ids, read until every one of them is there."""
    wanted = set(ids)
    records = await read_records(infra.kafka_bootstrap, topic, timeout=120,
                                 until=lambda rs: wanted <= {header(r, "ce_id") for r in rs})
    return [r for r in records if header(r, "ce_id") in wanted]


async def analyzed(stub: pb_grpc.MonitorServiceStub, name: str, count: int) -> list[pb.Window]:
    async def check():  # type: ignore[no-untyped-def]
        response = await stub.ListWindows(pb.ListWindowsRequest(model_name=name, page_size=100))
        done = [w for w in response.windows if w.state == pb.WINDOW_STATE_ANALYZED]
        return done if len(done) >= count else None
    return sorted(await eventually(check, what=f"{count} analyzed windows of {name}"), key=lambda w: w.sequence)


async def test_drift_alert_retrain_lineage_late_labels_and_reviews(monitor, registry, producer, infra, unique):  # type: ignore[no-untyped-def]
    name = f"fraud_{unique}"
    version = (await registry_client.register(registry, name, reference_artifact(name))).version
    rng = np.random.default_rng(1)
    async with rpc.channel(monitor.address, auth=infra.tokens.auth("reader")) as channel:
        stub = pb_grpc.MonitorServiceStub(channel)
        stable, stable_truth = prediction_events(name, version, 30, 20, rng)  # 600 rows = 3 windows
        await send_events(producer, stable)
        windows = await analyzed(stub, name, 3)
        assert [w.rows for w in windows] == [200, 200, 200]
        assert not any(w.drifted for w in windows), [[(f.feature, f.score) for f in w.features] for w in windows]
        assert all(len(w.features) == 4 and w.estimated_performance["roc_auc"] > 0.6 for w in windows)
        assert all(not w.performance for w in windows)  # no labels yet

        shifted, shifted_truth = prediction_events(name, version, 30, 20, rng, shift=2.0)
        await send_events(producer, shifted)
        windows = await analyzed(stub, name, 6)
        assert [w.drifted for w in windows] == [False, False, False, True, True, True]
        # Every window is analyzed, so every decision is made: 3 drifted windows, one alert (cooldown).
        alert_ids = await emitted(monitor, "drift.detected", name)
        assert len(alert_ids) == 1
        mine = await published(infra, "drift.detected", alert_ids)
        assert len(mine) == 1
        alert = monitoring_pb2.DriftDetected.FromString(mine[0].value)
        assert header(mine[0], "ce_id") == alert.drift_id
        assert alert.model.version == version and alert.window_id == windows[4].window_id
        assert alert.report_uri == f"monitor://windows/{windows[4].window_id}"
        assert alert.drifted_share >= 0.5 and alert.performance_estimated
        assert {f.feature for f in alert.features if f.drifted} >= {"x0", "x1", "x2"}

        # Reviews: low-confidence rows (|p - 0.5| <= 0.05), at most 3 per window (sampled as windows close).
        async with monitor.db.connection() as conn:
            rows = await (await conn.execute(
                "SELECT event_id FROM outbox WHERE topic = 'reviews.requested' ORDER BY id")).fetchall()
        reviews = await published(infra, "reviews.requested", [r["event_id"] for r in rows])
        low = [reviews_pb2.ReviewRequested.FromString(r.value) for r in reviews]
        low = [r for r in low if r.model.name == name]
        assert low and all(r.reason == reviews_pb2.REVIEW_REASON_LOW_CONFIDENCE for r in low)
        per_window: dict[str, int] = {}
        for r in low:
            assert abs(float(r.context["probability"]) - 0.5) <= 0.05
            # The prediction's time: a reviewer's label of the row is valid as of then.
            assert r.HasField("event_time") and r.event_time.ToDatetime() <= r.requested_at.ToDatetime()
            per_window[r.context["window_id"]] = per_window.get(r.context["window_id"], 0) + 1
        assert max(per_window.values()) <= 3

        # No labels yet: the retrain request waits.
        status = await stub.GetModelStatus(pb.GetModelStatusRequest(model_name=name))
        assert status.versions[0].last_alert.drift_id == alert.drift_id
        assert status.versions[0].last_retrain_request_id == ""

        # Labels join late: performance appears on analyzed windows, then the retrain request goes out.
        await send_events(producer, feedback_events(name, stable_truth[:200] + shifted_truth))
        request_ids = await eventually(lambda: emitted(monitor, "retrain.requests", name), what="a retrain request")
        [record] = await published(infra, "retrain.requests", request_ids)
        request = models_pb2.RetrainRequested.FromString(record.value)
        assert request.parent == common_pb2.ModelRef(name=name, version=version)
        assert request.drift_event_id == alert.drift_id and request.kind == common_pb2.MODEL_KIND_PREDICTIVE
        assert request.reason in (models_pb2.RETRAIN_REASON_DRIFT, models_pb2.RETRAIN_REASON_PERFORMANCE)
        assert request.window_start.ToDatetime(tzinfo=UTC) == windows[3].start.ToDatetime(tzinfo=UTC)  # onset
        # The trainer accepts it: its parameters only describe the run (tag.*), none overrides the spec.
        from flywheel.predictive.spec import TAG_PREFIX
        assert request.parameters and all(k.startswith(TAG_PREFIX) for k in request.parameters)

        async def labelled():  # type: ignore[no-untyped-def]
            ws = await analyzed(stub, name, 6)
            done = sum(w.labelled_rows for w in ws) == 800 and all(bool(w.performance) == (w.labelled_rows > 0)
                                                                  for w in ws)
            return ws if done else None
        # Windows hold rows in arrival order (6 partitions), so the 200 labelled stable rows spread over them.
        windows = await eventually(labelled, what="performance of late-labelled windows")
        assert await emitted(monitor, "retrain.requests", name) == request_ids  # every label joined: still one
        assert sum(w.labelled_rows for w in windows[:3]) == 200
        assert [w.labelled_rows for w in windows[3:]] == [200, 200, 200]
        most = max(windows[:3], key=lambda w: w.labelled_rows)
        assert most.performance["roc_auc"] > 0.7  # labels follow p before the shift
        assert windows[5].performance["roc_auc"] < 0.65  # and not after it
        status = await stub.GetModelStatus(pb.GetModelStatusRequest(model_name=name))
        assert status.versions[0].last_retrain_request_id == request.request_id

        # Reports: JSON from the stored snapshot, HTML rendered on demand.
        report = await stub.GetReport(pb.GetReportRequest(window_id=windows[4].window_id))
        content = json.loads(report.content)
        assert content["evidently"]["metrics"] and content["window"]["windowId"] == windows[4].window_id
        html = await stub.GetReport(pb.GetReportRequest(window_id=windows[4].window_id,
                                                        format=pb.REPORT_FORMAT_HTML))
        assert "<html" in html.content.lower() and len(html.content) > 100_000


async def test_disputed_feedback_requests_review(monitor, registry, producer, infra, unique):  # type: ignore[no-untyped-def]
    name = f"dispute_{unique}"
    version = (await registry_client.register(registry, name, reference_artifact(name))).version
    events, _truth = prediction_events(name, version, 1, 5, np.random.default_rng(3))
    await send_events(producer, events)
    prediction = events[0].payload
    predicted = list(prediction.outputs[1].bool_contents)
    entity = prediction.entity_ids[0]
    # The prediction is stored before its disputing feedback arrives (feedback of an unknown row has no prediction).
    await eventually(lambda: _status_seen(monitor, name), what="the prediction stored")
    await send_events(producer, feedback_events(name, [(prediction.request_id, entity, not predicted[0])],
                                                source=predictions_pb2.FEEDBACK_SOURCE_END_USER))

    # The dispute is decided when the feedback is ingested: wait for its review in the outbox (keyed by the
    # request id), then read it from the topic.
    ids = await eventually(lambda: emitted(monitor, "reviews.requested", prediction.request_id),
                           what="a disputed review")
    assert len(ids) == 1
    found = [reviews_pb2.ReviewRequested.FromString(r.value)
             for r in await published(infra, "reviews.requested", ids)]
    assert [r.reason for r in found] == [reviews_pb2.REVIEW_REASON_DISPUTED]
    assert found[0].context["entity_id"] == entity and found[0].model.version == version


async def test_restart_poison_no_loss_no_double_count(infra, registry_app, registry, producer, unique):  # type: ignore[no-untyped-def]
    name = f"restart_{unique}"
    version = (await registry_client.register(registry, name, reference_artifact(name))).version
    settings = monitor_settings(infra, registry_app, unique, batch_size=50)
    rng = np.random.default_rng(5)
    first, _ = prediction_events(name, version, 60, 10, rng)    # 600 rows
    second, _ = prediction_events(name, version, 37, 10, rng)   # 370 rows
    url = infra.database_url

    async def rows_stored() -> int:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            # The group reads the whole topic (other tests' models too): count this model's rows.
            cur = await conn.execute(f"SELECT count(*) FROM monitor_{unique}.observations WHERE model_name = %s",
                                     (name,))
            return (await cur.fetchone())[0]

    app = MonitorApp(settings)
    await app.start()
    try:
        # A poison record between valid ones: dead-lettered, the stream goes on.
        await producer.send_and_wait("predictions.logged", value=b"\x00not protobuf", key=b"poison",
                                     headers=[("ce_id", b"poison-" + unique.encode())])
        await send_events(producer, first)
        await eventually(lambda: _at_least(rows_stored, 200), what="some rows ingested")
    finally:
        await app.stop()  # mid-stream
    await send_events(producer, second)
    await send_events(producer, first[:20])  # a replay of events already counted
    sent = await end_offsets(infra.kafka_bootstrap, PREDICTIONS_LOGGED.name)
    app = MonitorApp(settings)
    await app.start()
    try:
        # faust commits an offset once its batch's transaction committed: a double count would be stored by then.
        await consumed_through(infra.kafka_bootstrap, settings.consumer_group, PREDICTIONS_LOGGED.name, sent,
                               timeout=120)
        assert await rows_stored() == 970
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute(
                f"SELECT sequence, rows, state, (SELECT count(*) FROM monitor_{unique}.observations o "
                f"WHERE o.window_id = w.window_id) FROM monitor_{unique}.windows w WHERE model_name = %s "
                "ORDER BY sequence", (name,))
            windows = await cur.fetchall()
        assert [w[1] for w in windows] == [200, 200, 200, 200, 170]
        assert all(w[1] == w[3] for w in windows)  # counters agree with the stored rows
        assert [w[2] != "open" for w in windows] == [True] * 4 + [False]
        dlq = await read_records(infra.kafka_bootstrap, "predictions.logged.dlq",
                                 until=lambda rs: any(header(r, "ce_id") == f"poison-{unique}" for r in rs))
        poison = [r for r in dlq if header(r, "ce_id") == f"poison-{unique}"]
        assert poison[0].value == b"\x00not protobuf" and "ce_type" in header(poison[0], "dlq_error")
        assert header(poison[0], "dlq_consumer") == settings.consumer_group
    finally:
        await app.stop()


async def _status_seen(app: MonitorApp, name: str) -> bool:
    async with rpc.channel(app.address, auth=app.settings.client_auth()) as channel:
        try:
            status = await pb_grpc.MonitorServiceStub(channel).GetModelStatus(pb.GetModelStatusRequest(model_name=name))
        except grpc.aio.AioRpcError:
            return False
    return any(v.open_window_rows > 0 for v in status.versions)


async def _at_least(fn, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await fn() >= n


async def test_grpc_status_codes(monitor):  # type: ignore[no-untyped-def]
    async with rpc.channel(monitor.address, auth=monitor.settings.client_auth()) as channel:
        stub = pb_grpc.MonitorServiceStub(channel)
        cases = [
            (stub.GetReport(pb.GetReportRequest(window_id="no-such-window")), grpc.StatusCode.NOT_FOUND),
            (stub.GetReport(pb.GetReportRequest()), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.GetReport(pb.GetReportRequest(window_id="x", format=7)), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.GetModelStatus(pb.GetModelStatusRequest(model_name="never-seen")), grpc.StatusCode.NOT_FOUND),
            (stub.GetModelStatus(pb.GetModelStatusRequest()), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.ListWindows(pb.ListWindowsRequest(model_name="m", page_token="bogus")),
             grpc.StatusCode.INVALID_ARGUMENT),
            (stub.ListWindows(pb.ListWindowsRequest()), grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for call, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == code, info.value.details()
            assert info.value.details()


async def test_time_windows_follow_prediction_time_and_close_when_overdue(infra, unique):  # type: ignore[no-untyped-def]
    """Time mode, driving the ingest directly: one window per minute of prediction time; a later bucket closes
    the open window, a late row joins the open window, and an overdue window closes on its own."""
    settings = MonitorSettings(kafka_bootstrap=infra.kafka_bootstrap, database_url=infra.database_url,
                               home=infra.home, db_schema=f"monitor_time_{unique}", window_mode="time",
                               window_seconds=60, window_grace_seconds=10)
    ingest = Ingest(settings)
    start = datetime(2025, 1, 1, tzinfo=UTC)

    def at(*seconds: int) -> list[Event]:
        events = []
        for s in seconds:
            message = predictions_pb2.PredictionLogged(
                request_id=str(uuid.uuid4()), model=common_pb2.ModelRef(name="timed", version=1),
                arm=predictions_pb2.PREDICTION_ARM_CHAMPION,
                outputs=[common_pb2.Tensor(name="probability", datatype="FP32", shape=[1], fp_contents=[0.9])])
            message.timestamp.FromDatetime(start + timedelta(seconds=s))
            events.append(Event(PREDICTIONS_LOGGED, message.request_id, message, "tests"))
        return events

    async def windows(conn: psycopg.AsyncConnection) -> list[tuple]:
        cur = await conn.execute("SELECT sequence, state, rows, bucket_start, start_ts, end_ts FROM windows "
                                 "ORDER BY sequence")
        return [(r["sequence"], r["state"], r["rows"], r["bucket_start"] - start, r["start_ts"] - start,
                 r["end_ts"] - start) for r in await cur.fetchall()]

    db = await Database(settings.database_url, settings.db_schema).open(MIGRATIONS)
    try:
        async with db.connection() as conn, conn.transaction():
            result = await ingest.predictions(conn, at(5, 30, 5, 65), now=start + timedelta(seconds=70))
        assert (result.rows, result.windows_closed) == (4, 1)
        async with db.connection() as conn, conn.transaction():
            late = await ingest.predictions(conn, at(10), now=start + timedelta(seconds=80))
            assert await close_overdue_time_windows(conn, settings, start + timedelta(seconds=129)) == 0
            assert await close_overdue_time_windows(conn, settings, start + timedelta(seconds=130)) == 1
        assert (late.rows, late.windows_closed) == (1, 0)
        async with db.connection() as conn, conn.transaction():
            await ingest.predictions(conn, at(200), now=start + timedelta(seconds=200))
            assert await windows(conn) == [
                (1, "pending", 3, timedelta(0), timedelta(seconds=5), timedelta(seconds=30)),
                # The late row (bucket 0, closed already) joined the open window of bucket 60.
                (2, "pending", 2, timedelta(seconds=60), timedelta(seconds=10), timedelta(seconds=65)),
                (3, "open", 1, timedelta(seconds=180), timedelta(seconds=200), timedelta(seconds=200))]
            state = await (await conn.execute("SELECT windows, champion_seen_at FROM version_state")).fetchone()
            assert state is not None and state["windows"] == 3 and state["champion_seen_at"] is not None
    finally:
        await db.close()
