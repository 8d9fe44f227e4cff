"""The live demo driver's pure parts: the time map, label scheduling, windowed metrics, the plot, the status JSON;
and its narration consumer against a fake Kafka consumer."""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import UnknownError
from payments_demo.config import Addresses, DriverConfig
from payments_demo.driver import DemoDriver
from payments_demo.labels import LabelSchedule, label_event
from payments_demo.narration import Narration
from payments_demo.pipeline import FeatureRow
from payments_demo.stats import LiveStats, Prediction, confusion
from payments_demo.status import accuracy_svg, status_document
from payments_demo.timeline import DRIFT, TimeMap, build_timeline, restamp_row

from flywheel.common.events import Event
from flywheel.common.topics import EVALUATIONS_COMPLETED, MODELS_PROMOTED
from flywheel.proto.events.v1 import models_pb2
from tests import polling

WALL = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
SIM = datetime(2026, 1, 10, tzinfo=UTC)


def test_time_map_is_one_linear_map_and_resumes_without_a_jump() -> None:
    tm = TimeMap.day_per(60, wall_anchor=WALL, sim_anchor=SIM)
    assert tm.to_wall(SIM) == WALL
    assert tm.to_wall(SIM + timedelta(days=1)) == WALL + timedelta(seconds=60)
    assert tm.to_wall(SIM - timedelta(hours=6)) == WALL - timedelta(seconds=15)
    assert tm.to_sim(tm.to_wall(SIM + timedelta(hours=5))) == SIM + timedelta(hours=5)
    later = WALL + timedelta(minutes=3)
    resumed = tm.resumed(later)
    assert resumed.to_sim(later) == SIM and resumed.compression == tm.compression
    with pytest.raises(ValueError):
        TimeMap(WALL, SIM, 0)


def test_customer_stats_rows_stay_strictly_before_their_payment() -> None:
    tm = TimeMap.day_per(60, wall_anchor=WALL, sim_anchor=SIM)
    t = SIM + timedelta(hours=1)
    stats = FeatureRow("customer_stats", {"customer_id": "c"}, {}, t - timedelta(microseconds=1))
    txn = FeatureRow("transactions", {"transaction_id": "t"}, {}, t)
    assert restamp_row(stats, tm).event_time < restamp_row(txn, tm).event_time
    assert restamp_row(txn, tm).event_time == tm.to_wall(t)


def test_labels_come_due_in_observation_order_with_the_prediction_request_id() -> None:
    config = DriverConfig(day_seconds=60, rate=2, warmup_days=0, history_days=1, stable_days=1, drift_days=0)
    timeline = build_timeline(config, "s1")
    assert all(t.transaction_id.startswith("ts1-") for t in timeline.transactions)
    live = [t for t in timeline.transactions if t.event_time >= timeline.live_start][:20]
    tm = TimeMap.day_per(60, wall_anchor=WALL, sim_anchor=timeline.live_start)
    schedule = LabelSchedule()
    for i, t in enumerate(live):
        schedule.add(t, event_wall=tm.to_wall(t.event_time), request_id=f"r{i // 5}")
    assert schedule.due(live[0].event_time) == []  # no label is known at its payment's time
    due = schedule.due(max(t.label_observed_at for t in live))
    assert len(due) == 20 and len(schedule) == 0
    assert [p.observed_sim for p in due] == sorted(t.label_observed_at for t in live)
    event = label_event(due[0], tm)
    fb = event.payload
    assert fb.entity_id == due[0].txn.transaction_id and fb.request_id == due[0].request_id
    assert event.key == fb.request_id
    assert fb.event_time.ToDatetime(UTC) == tm.to_wall(due[0].txn.event_time)
    assert fb.observed_at.ToDatetime(UTC) > fb.event_time.ToDatetime(UTC)
    assert fb.label.flag == due[0].txn.is_fraud
    # Short delays: hours, not days (seconds of wall time at one simulated day per minute).
    assert all(timedelta(0) < p.txn.label_delay <= timedelta(hours=6) for p in due)


def pred(i: int, predicted: bool, truth: bool, version: int = 1, phase: str = "stable") -> Prediction:
    return Prediction(float(i), f"t{i}", f"r{i}", version, 0.9 if predicted else 0.1, predicted, truth, phase)


def test_windowed_metrics_per_phase_and_version() -> None:
    stats = LiveStats(window=4)
    stats.record([pred(0, True, True), pred(1, False, False), pred(2, False, True), pred(3, True, False)])
    w = stats.window()
    assert w["n"] == 4 and w["accuracy"] == 0.5 and w["recall"] == 0.5 and w["precision"] == 0.5
    assert w["f1"] == pytest.approx(0.5)
    stats.record([pred(i, False, False, version=2, phase="drift") for i in range(4, 8)])
    assert stats.window()["accuracy"] == 1.0 and stats.window()["recall"] is None  # old ones left the window
    snap = stats.snapshot()
    assert snap["by_phase"]["stable"]["n"] == 4 and snap["by_phase"]["drift"]["accuracy"] == 1.0
    assert set(snap["by_version"]) == {"1", "2"} and snap["serving_version"] == 2
    assert snap["by_phase_version"]["stable/v1"]["accuracy"] == 0.5
    assert snap["by_phase_version"]["drift/v2"]["n"] == 4
    assert [p["accuracy"] for p in snap["series"]] == [0.5, 1.0]
    assert confusion([]).metrics()["accuracy"] is None


def test_accuracy_svg_draws_series_and_markers() -> None:
    series = [{"t": 100.0, "accuracy": 0.9, "f1": 0.5}, {"t": 160.0, "accuracy": 0.7, "f1": None},
              {"t": 220.0, "accuracy": 0.95, "f1": 0.6}]
    svg = accuracy_svg(series, [{"t": 150.0, "kind": "drift", "label": "drift <onset>"},
                                {"t": 200.0, "kind": "promotion", "label": "v2 promoted"}])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'class="series-accuracy"' in svg and svg.count(",") >= 3
    assert 'class="marker-drift"' in svg and 'class="marker-promotion"' in svg
    assert "drift &lt;onset&gt;" in svg  # labels are escaped
    assert "http" not in svg.replace("http://www.w3.org/2000/svg", "")  # nothing external
    assert "no predictions scored yet" in accuracy_svg([])


def test_status_document_shape() -> None:
    stats = LiveStats(window=10)
    stats.record([pred(0, True, True)])
    driver_status = {"model": "fraud", "session": "s", "phase": "stable", "drift": "both", "time": {},
                     "stats": stats.snapshot(), "markers": [], "pending_labels": 3,
                     "events": [{"topic": "models.promoted", "at": 1.0, "text": "PROMOTED", "event": {}},
                                {"topic": "drift.detected", "at": 2.0, "text": "ALERT", "event": {}}]}
    doc = status_document(driver_status, {"champion": 2, "windows": [], "runs": [], "evaluations": [],
                                          "errors": {"windows": "UNAVAILABLE: down"}})
    assert doc["serving"] == {"champion": 2, "answered_by": 1}
    assert doc["accuracy"]["window"]["accuracy"] == 1.0 and len(doc["accuracy"]["points"]) == 1
    assert [e["text"] for e in doc["promotions"]] == ["PROMOTED"] and [e["text"] for e in doc["alerts"]] == ["ALERT"]
    assert doc["counts"]["labels_pending"] == 3 and doc["unavailable"] == {"windows": "UNAVAILABLE: down"}
    assert set(doc) >= {"drift_windows", "retraining", "evaluations", "markers", "registered"}


class FakeConsumer:
    """Just what the narration uses of AIOKafkaConsumer: assigned at once, then the scripted `getmany` answers."""

    script: deque[Any] = deque()

    def __init__(self, *topics: str, **options: Any) -> None:
        self.topics = topics

    async def start(self) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(t, 0) for t in self.topics}

    async def position(self, tp: TopicPartition) -> int:
        return 0

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        if not self.script:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        answer = self.script.popleft()
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def stop(self) -> None:
        pass


def record(event: Event) -> SimpleNamespace:
    key, value, headers = event.encode()
    return SimpleNamespace(topic=event.topic.name, key=key, value=value, headers=headers)


async def test_narration_skips_what_it_cannot_describe_and_outlives_broker_errors(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A promotion with a reason newer than this demo knows: describing it fails; a non-retriable broker error;
    # then an evaluation the narration must still hear.
    newer = models_pb2.ModelPromoted(model_name="fraud", alias="champion", version=2, reason=99)  # type: ignore[arg-type]
    later = models_pb2.EvaluationCompleted(evaluation_id="ev-1", model_name="fraud", candidate_version=3,
                                           verdict=models_pb2.EVALUATION_VERDICT_FAILED)
    FakeConsumer.script = deque([
        {TopicPartition(MODELS_PROMOTED.name, 0): [record(Event(MODELS_PROMOTED, "fraud", newer, "tests"))]},
        UnknownError("the broker had a bad moment"),
        {TopicPartition(EVALUATIONS_COMPLETED.name, 0): [
            record(Event(EVALUATIONS_COMPLETED, "fraud", later, "tests"))]},
    ])
    monkeypatch.setattr("aiokafka.AIOKafkaConsumer", FakeConsumer)
    narration = Narration("fraud", bootstrap_servers="127.0.0.1:9", group_id="payments-demo-unit", markers=[])
    ready = asyncio.Event()
    task = asyncio.create_task(narration.consume(ready))
    try:
        await asyncio.wait_for(ready.wait(), 5)

        async def narrated_or_ended() -> bool:
            return bool(narration.events) or task.done()
        await polling.eventually(narrated_or_ended, 5, "the evaluation narrated", every=0.05)
        assert not task.done(), task.exception()
        assert [(e["topic"], e["event"]["evaluation_id"]) for e in narration.events] == [
            ("evaluations.completed", "ev-1")]
        assert not FakeConsumer.script
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_driver_shows_its_parts_on_one_status() -> None:
    """The narration and the live traffic mark the same plot; the status reads every part of the driver."""
    config = DriverConfig(warmup_days=0, history_days=1, stable_days=1, drift_days=1, rate=2.0)
    driver = DemoDriver(config, Addresses(kafka_bootstrap="127.0.0.1:9", database_url="postgresql://unused"),
                        session="unit", consume_events=False)
    assert driver.timeline.transactions[0].transaction_id.startswith("tunit-") and driver.phase == "bootstrap"
    driver.narration.on_event(MODELS_PROMOTED.name, models_pb2.ModelPromoted(
        model_name="fraud", alias="champion", version=2, previous_version=1))
    driver.narration.on_event(MODELS_PROMOTED.name, models_pb2.ModelPromoted(model_name="other", alias="champion"))
    driver.traffic._enter(DRIFT)
    status = driver.status()
    assert [m["kind"] for m in status["markers"]] == ["promotion", "drift"] and status["phase"] == DRIFT
    assert [e["text"].split()[0] for e in status["events"]] == ["PROMOTED", "PROMOTED"]
    assert status["drift"] == "both" and status["time"]["onset_wall"] is not None
    assert status["stats"]["scored"] == 0 and status["pending_labels"] == 0
