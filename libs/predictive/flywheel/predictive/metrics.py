"""Binary classification metrics in plain numpy (no scikit-learn at run time).

Definitions follow scikit-learn's: ROC AUC is the Mann-Whitney statistic with tied
scores counted half, PR AUC is average precision (step-wise, no interpolation).
"""

from __future__ import annotations

import math

import numpy as np

ECE_BINS = 10


def _arrays(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.shape[0]}) and scores ({p.shape[0]}) differ in length")
    return y, p


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, score = _arrays(y, score)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(y.size, dtype=np.float64)
    # Average ranks (1-based) over runs of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], y.size]
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    rank_sum = ranks[y == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """PR AUC as average precision: sum over thresholds of (recall step) x precision."""
    y, score = _arrays(y, score)
    positives = y.sum()
    if positives == 0:
        return math.nan
    tps, fps, _ = _curve(y, score)
    precision = tps / (tps + fps)
    recall = tps / positives
    steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(steps * precision))


def _curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true / false positives at each distinct threshold, highest score first."""
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tps = np.cumsum(t)[last]
    fps = (last + 1) - tps
    return tps, fps, s[last]


def max_f1_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """The threshold (predict positive when score >= it) with the highest F1.

    Halfway between the chosen score and the next lower one, so a slightly lower
    score on new data still falls on the same side.
    """
    y, score = _arrays(y, score)
    if y.sum() == 0:
        raise ValueError("no positive labels: F1 is undefined")
    tps, fps, thresholds = _curve(y, score)
    f1 = 2 * tps / (tps + fps + y.sum())
    best = int(np.argmax(f1))
    if best + 1 < thresholds.size:
        return float((thresholds[best] + thresholds[best + 1]) / 2.0)
    return float(thresholds[best])


def confusion(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 when predicting positive for score >= threshold."""
    y, score = _arrays(y, score)
    predicted = score >= threshold
    tp = float(np.sum(predicted & (y == 1)))
    fp = float(np.sum(predicted & (y == 0)))
    fn = float(np.sum(~predicted & (y == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "predicted_positive_rate": float(predicted.mean())}


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over `bins` equal-width probability bins: sum of |accuracy - confidence| weighted by bin size.

    Confidence is the mean predicted probability of the positive class in the bin and
    accuracy the share of positives there (the binary "reliability diagram" form).
    """
    y, prob = _arrays(y, prob)
    if y.size == 0:
        return math.nan
    index = np.minimum((prob * bins).astype(np.int64), bins - 1)
    index = np.maximum(index, 0)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.sum() / y.size * abs(y[mask].mean() - prob[mask].mean())
    return float(total)


def brier(y: np.ndarray, prob: np.ndarray) -> float:
    y, prob = _arrays(y, prob)
    return float(np.mean((prob - y) ** 2))


def log_loss(y: np.ndarray, prob: np.ndarray, eps: float = 1e-12) -> float:
    y, prob = _arrays(y, prob)
    prob = np.clip(prob, eps, 1 - eps)
    return float(-np.mean(y * np.log(prob) + (1 - y) * np.log1p(-prob)))


def binary_metrics(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    """The metrics a run reports for one slice."""
    y, prob = _arrays(y, prob)
    return {
        "roc_auc": roc_auc(y, prob),
        "pr_auc": average_precision(y, prob),
        **confusion(y, prob, threshold),
        "ece": expected_calibration_error(y, prob),
        "brier": brier(y, prob),
        "log_loss": log_loss(y, prob),
        "positive_rate": float(y.mean()) if y.size else math.nan,
        "rows": float(y.size),
    }
