"""The evaluator's pure parts: metrics at a model's own threshold, reliability bins, slices,
the gate's checks and verdict, and which feedback can label an evaluation row."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from flywheel.common.errors import InvalidArgument
from flywheel.evaluator import report as r
from flywheel.evaluator.evaluator import EvaluationRequest, check_request, label_row
from flywheel.predictive.spec import GateSpec
from flywheel.proto.events.v1 import predictions_pb2

Y = np.array([0, 0, 1, 1, 0, 1, 0, 0], dtype=float)
P = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.6, 0.05])


def test_metrics_at_the_models_own_threshold() -> None:
    got = r.model_metrics(Y, P, threshold=0.5)
    # Predicted positive: 0.8, 0.9, 0.6 -> tp 2, fp 1, fn 1 (0.35), tn 4.
    assert got["precision"] == pytest.approx(2 / 3) and got["recall"] == pytest.approx(2 / 3)
    assert got["f1"] == pytest.approx(2 / 3) and got["accuracy"] == pytest.approx(6 / 8)
    # Pairs (pos, neg) ranked right: 0.35 beats 0.1, 0.2, 0.05 (3 of 5); 0.8 and 0.9 beat all 5 -> 13/15.
    assert got["roc_auc"] == pytest.approx(13 / 15)
    assert got["brier"] == pytest.approx(float(np.mean((P - Y) ** 2)))
    assert got["threshold"] == 0.5 and got["rows"] == 8 and got["positive_rate"] == pytest.approx(3 / 8)
    lower = r.model_metrics(Y, P, threshold=0.3)
    assert lower["recall"] == 1.0 and lower["precision"] == pytest.approx(3 / 5)


def test_calibration_bins_and_ece_agree() -> None:
    y = np.array([0, 0, 1, 1, 1, 0], dtype=float)
    p = np.array([0.05, 0.15, 0.15, 0.95, 0.91, 0.99])
    bins = r.calibration(y, p)
    assert len(bins) == 10 and sum(b.rows for b in bins) == 6
    assert (bins[0].rows, bins[0].mean_predicted, bins[0].observed_rate) == (1, pytest.approx(0.05), 0.0)
    assert (bins[1].rows, bins[1].mean_predicted, bins[1].observed_rate) == (2, pytest.approx(0.15), 0.5)
    assert bins[9].rows == 3 and bins[9].observed_rate == pytest.approx(2 / 3) and bins[5].rows == 0
    ece = sum(b.rows / 6 * abs(b.observed_rate - b.mean_predicted) for b in bins)
    assert r.model_metrics(y, p, 0.5)["ece"] == pytest.approx(ece)
    # A perfectly calibrated constant: predicted 0.25 where a quarter are positive.
    assert r.model_metrics(np.array([1, 0, 0, 0.0]), np.full(4, 0.25), 0.5)["ece"] == pytest.approx(0.0)


def test_slices_skip_small_values_and_compare_both_models() -> None:
    y = np.array([1, 0, 1, 0, 1, 0, 0, 1], dtype=float)
    good = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.2, 0.6])
    categories = {"cat": ["a", "a", "a", "a", "b", "b", None, None]}
    slices = r.slice_metrics(y, good, 0.5, np.full(8, 0.5), 0.5, categories, min_rows=2)
    assert [(s.value, s.rows) for s in slices] == [("(missing)", 2), ("a", 4), ("b", 2)]
    a = slices[1]
    assert a.candidate["roc_auc"] == 1.0 and a.baseline["roc_auc"] == 0.5 and a.feature == "cat"
    assert [s.value for s in r.slice_metrics(y, good, 0.5, None, 0.5, categories, min_rows=3)] == ["a"]
    assert r.slice_metrics(y, good, 0.5, None, 0.5, categories, min_rows=3)[0].baseline == {}


def test_the_gate() -> None:
    gate = GateSpec(metric="roc_auc", tolerance=0.01, floor=0.7, max_ece=0.1)
    good = {"roc_auc": 0.90, "ece": 0.05}
    checks = r.gate_checks(gate, good, {"roc_auc": 0.905}, baseline_version=3)
    assert [c.passed for c in checks] == [True, True, True] and r.passed(checks)
    assert "0.9000" in checks[0].detail and "v3 0.9050" in checks[0].detail and "0.8950" in checks[0].detail
    worse = r.gate_checks(gate, good, {"roc_auc": 0.92})
    assert [c.passed for c in worse] == [False, True, True] and not r.passed(worse)
    assert "worse than the baseline" in worse[0].detail
    # No baseline: the comparison is skipped, the floor still applies.
    alone = r.gate_checks(gate, {"roc_auc": 0.65, "ece": 0.2}, None)
    assert [c.name for c in alone] == ["roc_auc >= 0.7", "ece <= 0.1"] and not any(c.passed for c in alone)
    # An undefined metric (one class in the data) fails rather than passes.
    assert not r.passed(r.gate_checks(GateSpec(), {"roc_auc": math.nan}, None))
    assert [c.name for c in r.gate_checks(GateSpec(), {"roc_auc": 0.8}, None)] == ["roc_auc >= 0.7"]


def test_compare_and_its_json_have_no_nans() -> None:
    comparison = r.compare(Y, P, 0.5, np.full(8, 0.3), 0.5, {"cat": ["x"] * 8}, min_slice_rows=1)
    assert comparison.rows == 8 and comparison.positives == 3
    assert comparison.baseline is not None and comparison.baseline["roc_auc"] == 0.5
    data = comparison.to_json()
    assert data["baseline"]["precision"] == 0.0 and len(data["candidate_calibration"]) == 10
    one_class = r.compare(np.zeros(4), np.full(4, 0.2), 0.5, None, 0.5, {}, 1)
    assert "roc_auc" not in one_class.to_json()["candidate"] and one_class.to_json()["baseline"] is None


def test_feedback_that_can_label_a_row() -> None:
    received = datetime(2026, 1, 5, tzinfo=UTC)
    fb = predictions_pb2.FeedbackReceived(feedback_id="f1", request_id="r1", entity_id="t1",
                                          entity_keys={"transaction_id": "t1"})
    fb.label.flag = True
    fb.event_time.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
    row = label_row(fb, received)
    assert row is not None and row["label_key"] == "t1" and row["flag"] is True and row["observed_at"] == received
    no_time = predictions_pb2.FeedbackReceived(entity_id="t2")
    no_time.label.flag = False
    assert label_row(no_time, received) is None
    number = predictions_pb2.FeedbackReceived(entity_id="t3")
    number.label.number = 1.0
    number.event_time.FromDatetime(received)
    assert label_row(number, received) is None
    by_request = predictions_pb2.FeedbackReceived(request_id="r9")
    by_request.label.flag = False
    by_request.event_time.FromDatetime(received)
    assert label_row(by_request, received)["label_key"] == "r9"  # type: ignore[index]


def test_evaluation_requests_are_checked() -> None:
    check_request(EvaluationRequest("fraud", 2, 1))
    for bad, field in ((EvaluationRequest("", 1), "model_name"), (EvaluationRequest("fraud", 0), "candidate_version"),
                       (EvaluationRequest("fraud", 1, -1), "baseline_version")):
        with pytest.raises(InvalidArgument, match=field):
            check_request(bad)
