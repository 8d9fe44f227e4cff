"""The metrics every service reports (flywheel.predictive.metrics): known cases and agreement with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.predictive import metrics as m


def test_expected_calibration_error_on_known_cases() -> None:
    assert m.expected_calibration_error(np.array([0] * 9 + [1]), np.full(10, 0.1)) == pytest.approx(0.0)
    assert m.expected_calibration_error(np.array([1] * 5 + [0] * 5), np.full(10, 0.9)) == pytest.approx(0.4)
    # Two bins, half the rows each: |0 - 0.2| / 2 + |0.5 - 0.8| / 2.
    y, p = np.array([0, 0, 1, 0]), np.array([0.2, 0.2, 0.8, 0.8])
    assert m.expected_calibration_error(y, p) == pytest.approx(0.25)
    # Probability 1.0 falls in the last bin.
    assert m.expected_calibration_error(np.array([1, 1]), np.array([1.0, 1.0])) == pytest.approx(0.0)


def test_metrics_agree_with_scikit_learn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    r = np.random.default_rng(5)
    y = (r.random(400) < 0.2).astype(int)
    score = np.round(r.random(400) * 0.6 + 0.4 * y * r.random(400), 2)  # rounded: plenty of ties
    assert m.roc_auc(y, score) == pytest.approx(sk.roc_auc_score(y, score))
    assert m.average_precision(y, score) == pytest.approx(sk.average_precision_score(y, score))
    threshold = m.max_f1_threshold(y, score)
    assert m.confusion(y, score, threshold)["f1"] == pytest.approx(
        max(sk.f1_score(y, score >= t) for t in np.unique(score)))
    assert m.brier(y, score) == pytest.approx(sk.brier_score_loss(y, score))
