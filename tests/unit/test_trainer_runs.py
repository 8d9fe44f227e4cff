"""The trainer's pure conversions of events: a retrain.requests event -> the run it asks for, and a
feedback.received event -> a row of its labels table."""

from __future__ import annotations

from datetime import UTC, datetime

from flywheel.proto.events.v1 import common_pb2, models_pb2, predictions_pb2
from flywheel.trainer.runs import RunRequest, label_row, retrain_run_request

START, END = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)
RECEIVED = datetime(2025, 2, 2, tzinfo=UTC)


def test_a_retrain_request_asks_for_its_window_parameters_and_causes() -> None:
    event = models_pb2.RetrainRequested(
        request_id="req-1", model_name="fraud", kind=common_pb2.MODEL_KIND_PREDICTIVE,
        reason=models_pb2.RETRAIN_REASON_DRIFT, parent=common_pb2.ModelRef(name="fraud", version=3),
        drift_event_id="drift-1", parameters={"epochs": "5"})
    event.window_start.FromDatetime(START)
    event.window_end.FromDatetime(END)
    assert retrain_run_request("event-1", event, "flywheel/monitor") == RunRequest(
        model_name="fraud", window_start=START, window_end=END, params={"epochs": "5"},
        reason=models_pb2.RETRAIN_REASON_DRIFT, retrain_request_id="req-1", drift_event_id="drift-1",
        parent_version=3, requested_by="flywheel/monitor")


def test_a_retrain_request_without_id_or_window_keeps_what_it_has() -> None:
    request = retrain_run_request("event-1", models_pb2.RetrainRequested(model_name="fraud"))
    assert request == RunRequest(model_name="fraud", window_start=None, window_end=None,
                                 retrain_request_id="event-1")


def feedback(**fields: object) -> predictions_pb2.FeedbackReceived:
    defaults: dict[str, object] = {
        "feedback_id": "f1", "request_id": "r1", "entity_id": "tx-1",
        "source": predictions_pb2.FEEDBACK_SOURCE_GROUND_TRUTH, "label": common_pb2.Label(flag=True),
        "entity_keys": {"transaction_id": "tx-1"}}
    message = predictions_pb2.FeedbackReceived(**{**defaults, **fields})  # type: ignore[arg-type]
    message.event_time.FromDatetime(START)
    return message


def test_a_flag_label_becomes_a_row_observed_when_received_unless_it_says() -> None:
    row = label_row(feedback(), RECEIVED)
    assert row == {"label_key": "tx-1", "source": predictions_pb2.FEEDBACK_SOURCE_GROUND_TRUTH, "feedback_id": "f1",
                   "request_id": "r1", "entity_id": "tx-1", "value_kind": "flag", "flag": True, "number": None,
                   "text": None, "entity_keys": {"transaction_id": "tx-1"}, "event_time": START,
                   "observed_at": RECEIVED}
    observed = feedback()
    observed.observed_at.FromDatetime(END)
    assert label_row(observed, RECEIVED)["observed_at"] == END  # type: ignore[index]


def test_feedback_that_cannot_label_a_row_gives_none() -> None:
    assert label_row(feedback(label=common_pb2.Label()), RECEIVED) is None
    assert label_row(feedback(entity_id="", request_id=""), RECEIVED) is None
    no_time = feedback()
    no_time.ClearField("event_time")
    assert label_row(no_time, RECEIVED) is None
