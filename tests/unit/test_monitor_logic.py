"""Monitor logic without infrastructure: CBPE against Monte Carlo labels, hysteresis/cooldown,
window assignment, and Evidently's telemetry being off."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from flywheel.monitor.analysis import estimated_performance, measured_performance, roc_auc
from flywheel.monitor.decision import WindowOutcome, decide
from flywheel.monitor.windows import Slot, assign_by_count, bucket_start, closed_by_count


def test_cbpe_matches_monte_carlo_of_calibrated_labels() -> None:
    rng = np.random.default_rng(7)
    p = rng.beta(0.6, 2.0, size=400)
    threshold = 0.4
    estimate = estimated_performance(p, threshold)
    draws = [measured_performance(p, rng.random(len(p)) < p, threshold) for _ in range(2000)]
    for metric in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        simulated = float(np.mean([d[metric] for d in draws]))
        spread = float(np.std([d[metric] for d in draws]))
        # Within a fifth of the sampling spread of one window (ratio metrics are ratios of expectations).
        assert abs(estimate[metric] - simulated) < 0.2 * spread + 0.005, (metric, estimate[metric], simulated)


def test_cbpe_of_confident_model_is_near_perfect_and_of_coin_flips_is_half() -> None:
    confident = np.array([0.001] * 50 + [0.999] * 50)
    assert estimated_performance(confident, 0.5)["accuracy"] > 0.99
    assert estimated_performance(confident, 0.5)["roc_auc"] > 0.99
    assert estimated_performance(np.full(100, 0.5), 0.5)["roc_auc"] == pytest.approx(0.5)


def test_roc_auc_handles_ties_and_single_class() -> None:
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert roc_auc(np.array([0.2, 0.3]), np.array([1, 1])) is None


T0 = datetime(2025, 1, 1, tzinfo=UTC)


def outcomes(*drifted: bool) -> list[WindowOutcome]:
    """Newest first; window i starts i hours before T0."""
    return [WindowOutcome(f"w{i}", T0 - timedelta(hours=i), d) for i, d in enumerate(drifted)]


def test_hysteresis_needs_n_of_last_m() -> None:
    assert not decide(outcomes(True, False, False), n=2, m=3, last_alert_at=None, now=T0, cooldown_seconds=0).alert
    d = decide(outcomes(True, False, True), n=2, m=3, last_alert_at=None, now=T0, cooldown_seconds=0)
    assert d.alert and d.drifted_of_last == 2
    assert d.onset == T0 - timedelta(hours=2)  # the earliest drifted window among the last M
    # Drifted windows older than the last M do not count.
    assert not decide(outcomes(True, False, False, True), n=2, m=3, last_alert_at=None, now=T0,
                      cooldown_seconds=0).alert
    # The newest window must be one of the drifted ones.
    assert not decide(outcomes(False, True, True), n=2, m=3, last_alert_at=None, now=T0, cooldown_seconds=0).alert


def test_cooldown_suppresses_then_allows() -> None:
    recent = outcomes(True, True, True)
    last = T0 - timedelta(minutes=30)
    assert not decide(recent, n=2, m=3, last_alert_at=last, now=T0, cooldown_seconds=3600).alert
    assert decide(recent, n=2, m=3, last_alert_at=last, now=T0 + timedelta(minutes=31), cooldown_seconds=3600).alert


def test_count_windows_fill_in_arrival_order() -> None:
    assert assign_by_count(0, 3, 5) == [Slot(0, 3)]
    assert assign_by_count(3, 9, 5) == [Slot(0, 2), Slot(1, 5), Slot(2, 2)]
    assert closed_by_count(3, assign_by_count(3, 9, 5), 5) == 2
    assert assign_by_count(5, 1, 5) == [Slot(1, 1)]  # a full open window is never overfilled
    # Splitting the same rows into batches differently assigns each row to the same window.
    whole = [s.offset for s in assign_by_count(0, 12, 5) for _ in range(s.count)]
    parts, open_rows, base = [], 0, 0
    for n in (4, 3, 5):
        for s in assign_by_count(open_rows, n, 5):
            parts += [base + s.offset] * s.count
        open_rows = (open_rows + n) % 5
        base = parts[-1] if open_rows else parts[-1] + 1
    assert parts == whole


def test_time_buckets_align() -> None:
    ts = datetime(2025, 1, 1, 10, 59, tzinfo=UTC)
    assert bucket_start(ts, 3600) == datetime(2025, 1, 1, 10, 0, tzinfo=UTC)


def test_evidently_telemetry_is_off() -> None:
    # Importing flywheel.monitor sets DO_NOT_TRACK; evidently must be imported after it.
    import flywheel.monitor.analysis  # noqa: F401

    assert os.environ.get("DO_NOT_TRACK")
    from evidently.telemetry import event_logger

    assert not event_logger.is_enabled()


def test_performance_is_judged_only_with_enough_labels_of_each_class() -> None:
    from flywheel.monitor.analysis import DriftSettings, Reference, WindowData, analyze

    rng = np.random.default_rng(3)
    ref = Reference(numeric=["x"], categorical=[], threshold=0.5, metrics={"roc_auc": 0.95, "recall": 0.9},
                    label_rate=0.05, sample=None)
    settings = DriftSettings(performance_tolerance=0.05, min_class_labels=20)

    def window(rows: int, positives: int, separable: bool) -> WindowData:
        labels = np.zeros(rows)
        labels[:positives] = 1.0
        p = np.where(labels > 0, 0.9, 0.1) if separable else rng.random(rows)
        return WindowData(np.zeros((rows, 1)), [[] for _ in range(rows)], p, labels)

    # A handful of positives: a random-looking AUC is sampling noise, not a performance drop.
    few = analyze(ref, window(200, 5, separable=False), settings, with_drift=False)
    assert few.performance["roc_auc"] < 0.9 and not few.performance_drop and not few.drifted
    # Enough of both classes and AUC far below training: the window drifted, on ROC AUC only.
    many = analyze(ref, window(400, 40, separable=False), settings, with_drift=False)
    assert set(many.performance_drop) == {"roc_auc"} and many.drifted
    good = analyze(ref, window(400, 40, separable=True), settings, with_drift=False)
    assert good.performance_drop["roc_auc"] < 0 and not good.drifted


def test_auc_standard_error_matches_the_spread_of_sampled_windows() -> None:
    from flywheel.monitor.analysis import metric_standard_error

    rng = np.random.default_rng(7)
    positives, negatives = 25, 475

    def sampled_auc() -> float:
        scores = np.concatenate([rng.normal(1.5, 1.0, positives), rng.normal(0.0, 1.0, negatives)])
        labels = np.concatenate([np.ones(positives), np.zeros(negatives)])
        value = roc_auc(scores, labels)
        assert value is not None
        return value

    draws = np.array([sampled_auc() for _ in range(1500)])
    error = metric_standard_error("roc_auc", float(draws.mean()), positives, negatives)
    # Hanley & McNeil assume exponential score distributions; on binormal scores they overstate the
    # spread a little, which errs toward fewer alerts, never toward false ones.
    assert draws.std() <= error <= 1.5 * draws.std()
    assert metric_standard_error("roc_auc", 0.9, 0, 10) == float("inf")


def test_a_drop_within_sampling_noise_is_not_drift() -> None:
    """500 rows with 25 frauds at AUC ~0.86 against 0.95 in training: 0.09 below, beyond the 0.05
    tolerance but about two standard errors, which stable traffic shows every few windows."""
    from flywheel.monitor.analysis import DriftSettings, Reference, WindowData, analyze

    rng = np.random.default_rng(11)
    ref = Reference(numeric=["x"], categorical=[], threshold=0.5, metrics={"roc_auc": 0.95},
                    label_rate=0.05, sample=None)
    labels = np.zeros(500)
    labels[:25] = 1.0
    p = 1 / (1 + np.exp(-np.where(labels > 0, rng.normal(1.5, 1.0, 500), rng.normal(0.0, 1.0, 500))))
    window = WindowData(np.zeros((500, 1)), [[] for _ in range(500)], p, labels)
    noisy = analyze(ref, window, DriftSettings(performance_tolerance=0.05, min_class_labels=20), with_drift=False)
    assert 0.05 < noisy.performance_drop["roc_auc"] < 0.2
    assert not noisy.performance_degraded and not noisy.drifted
    # Without the significance test (z = 0) the same window would count as drifted.
    strict = analyze(ref, window, DriftSettings(performance_tolerance=0.05, min_class_labels=20, performance_z=0.0),
                     with_drift=False)
    assert strict.performance_degraded and strict.drifted


def test_labels_become_outcomes_by_kind_and_by_the_configured_words() -> None:
    from flywheel.monitor.ingest import label_value
    from flywheel.proto.events.v1 import common_pb2

    assert label_value(common_pb2.Label(flag=True)) is True
    assert label_value(common_pb2.Label(number=0.2)) is False
    assert label_value(common_pb2.Label(text=" Yes ")) is True
    # The platform knows no project's words: "fraud" means something only when configured.
    assert label_value(common_pb2.Label(text="fraud")) is None
    assert label_value(common_pb2.Label(text="Fraud"), ["fraud"], ["legit"]) is True
    assert label_value(common_pb2.Label(text="legit"), ["fraud"], ["legit"]) is False
    assert label_value(common_pb2.Label()) is None


def test_window_growth_counts_rows_spans_their_times_and_notes_champion_traffic() -> None:
    from flywheel.monitor.ingest import CHAMPION, Row, window_growth
    from flywheel.monitor.ingest_store import WindowGrowth
    from flywheel.proto.events.v1 import predictions_pb2

    def row(i: int, minutes: int, arm: int) -> Row:
        return Row(f"r{i}", "m", 1, arm, 0, "", T0 + timedelta(minutes=minutes), 0.5, None, None, None)

    challenger = predictions_pb2.PREDICTION_ARM_CHALLENGER
    rows = [row(0, 5, challenger), row(1, 1, challenger), row(2, 9, CHAMPION), row(3, 3, challenger)]
    window_of = {rows[0].key: "a", rows[1].key: "a", rows[2].key: "b", rows[3].key: "a"}
    growth = window_growth(rows, window_of)
    assert list(growth) == ["a", "b"]  # in the order the windows first appear
    assert growth["a"] == WindowGrowth(3, T0 + timedelta(minutes=1), T0 + timedelta(minutes=5), False)
    assert growth["b"] == WindowGrowth(1, T0 + timedelta(minutes=9), T0 + timedelta(minutes=9), True)
