"""Analysis of one closed window: Evidently drift per feature and of the prediction, target
drift and performance once labels joined, and a label-free confidence-based estimate (CBPE).

CPU-bound and synchronous: the analysis worker runs `analyze` in a thread, off the ingest path.
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

os.environ.setdefault("DO_NOT_TRACK", "1")  # before evidently is imported (see flywheel/monitor/__init__.py)

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.metrics import ValueDrift

from flywheel.predictive.artifact import read_artifact

PREDICTION = "prediction"
LABEL = "label"


@dataclass
class Reference:
    """What the monitor needs from a version's artifact: feature order, threshold, training
    metrics and the reference sample (raw training rows with the model's probability)."""

    numeric: list[str]
    categorical: list[str]
    threshold: float
    metrics: dict[str, float]
    label_rate: float | None
    sample: pd.DataFrame | None

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def read_reference(data: bytes) -> Reference:
    """model.json and reference_profile.json of a `flywheel.predictive/v1` artifact (model.pt is not needed)."""
    artifact = read_artifact(data, with_model=False)
    numeric, categorical = artifact.schema.numeric, artifact.schema.categorical
    profile = artifact.profile
    columns = (profile.get("sample") or {}).get("columns") or {}
    sample = None
    if columns and all(f in columns for f in numeric + categorical):
        frame: dict[str, Any] = {}
        for f in numeric:
            frame[f] = np.array([np.nan if v is None else v for v in columns[f]], dtype=np.float64)
        for f in categorical:
            frame[f] = [str(v) for v in columns[f]]
        if columns.get(PREDICTION) is not None:
            frame[PREDICTION] = np.array([np.nan if v is None else v for v in columns[PREDICTION]], dtype=np.float64)
        if columns.get(LABEL) is not None:
            frame[LABEL] = [bool(v) for v in columns[LABEL]]
        sample = pd.DataFrame(frame)
    label_rate = profile.get("label_rate")
    return Reference(numeric, categorical, artifact.threshold, artifact.metrics,
                     None if label_rate is None else float(label_rate), sample)


# ---- performance -------------------------------------------------------------------------

def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None unless both classes are present."""
    labels = labels.astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def metric_standard_error(metric: str, value: float, positives: int, negatives: int) -> float:
    """Sampling standard error of a window's measured `metric`. ROC AUC: Hanley & McNeil (1982), which
    grows with the rarer class (a 500-row window with 25 frauds at AUC 0.85 has SE ~0.04). The others
    are approximated by a binomial error over the rows they mostly depend on (accuracy: all rows;
    recall, precision, F1 and PR AUC: the positives)."""
    n = positives + negatives
    if positives == 0 or negatives == 0:
        return math.inf
    if metric == "roc_auc":
        a = min(max(value, 1e-6), 1 - 1e-6)
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        variance = (a * (1 - a) + (positives - 1) * (q1 - a * a) + (negatives - 1) * (q2 - a * a)) / (
            positives * negatives)
        return math.sqrt(max(variance, 0.0))
    rows = n if metric == "accuracy" else positives
    return math.sqrt(max(value * (1 - value), 1.0 / rows) / rows)


def _ratios(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1}


def measured_performance(p: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = p >= threshold
    labels = labels.astype(bool)
    out = _ratios(float((predicted & labels).sum()), float((predicted & ~labels).sum()),
                  float((~predicted & labels).sum()), float((~predicted & ~labels).sum()))
    auc = roc_auc(p, labels)
    if auc is not None:
        out["roc_auc"] = auc
    out["label_rate"] = float(labels.mean())
    return out


def estimated_performance(p: np.ndarray, threshold: float) -> dict[str, float]:
    """Confidence-based performance estimation: if p is calibrated, a row predicted positive is a
    true positive with probability p, and so on; the expected confusion matrix gives expected
    accuracy (exact) and precision/recall/F1 (ratios of expectations). Expected ROC AUC: every
    (i, j) pair is a (positive, negative) pair with probability p_i (1 - p_j); AUC is the weight of
    correctly ordered pairs over all such weight."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    predicted = p >= threshold
    out = _ratios(float(p[predicted].sum()), float((1 - p[predicted]).sum()),
                  float(p[~predicted].sum()), float((1 - p[~predicted]).sum()))
    auc = expected_roc_auc(p)
    if auc is not None:
        out["roc_auc"] = auc
    out["label_rate"] = float(p.mean()) if len(p) else 0.0
    return out


def expected_roc_auc(p: np.ndarray) -> float | None:
    n = len(p)
    if n < 2:
        return None
    order = np.argsort(p, kind="mergesort")
    s, q = p[order], 1 - p[order]
    # For each row i (as the positive): weight of negatives j with a lower score, plus half of equal scores.
    unique, start = np.unique(s, return_index=True)
    cum_q = np.concatenate([[0.0], np.cumsum(q)])
    end = np.append(start[1:], n)
    group = np.repeat(np.arange(len(unique)), end - start)
    below = cum_q[start[group]]
    equal = cum_q[end[group]] - cum_q[start[group]] - q  # same score, j != i
    correct = float((s * (below + 0.5 * equal)).sum())
    total = float(s.sum() * q.sum() - (s * q).sum())
    return correct / total if total > 0 else None


# ---- drift ------------------------------------------------------------------------------

@dataclass
class DriftSettings:
    drift_share: float = 0.5
    num_method: str = ""
    cat_method: str = ""
    num_threshold: float | None = None
    cat_threshold: float | None = None
    performance_tolerance: float = 0.05
    performance_metric: str = "roc_auc"
    min_class_labels: int = 20
    performance_z: float = 3.0


@dataclass
class FeatureScore:
    feature: str
    method: str
    score: float
    threshold: float
    drifted: bool

    def as_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "method": self.method, "score": self.score,
                "threshold": self.threshold, "drifted": self.drifted}


@dataclass
class WindowData:
    numeric: np.ndarray          # [rows, n_numeric] float64, NaN = missing
    categorical: list[list[str]]  # rows x n_categorical
    probability: np.ndarray      # [rows]
    labels: np.ndarray           # [rows] float: 1, 0 or NaN (no label yet)


@dataclass
class Analysis:
    features: list[FeatureScore] = field(default_factory=list)
    drifted_share: float = 0.0
    prediction_drift: FeatureScore | None = None
    target_drift: FeatureScore | None = None
    performance: dict[str, float] = field(default_factory=dict)
    estimated_performance: dict[str, float] = field(default_factory=dict)
    performance_drop: dict[str, float] = field(default_factory=dict)
    # The measured metric fell significantly below training (see `analyze`).
    performance_degraded: bool = False
    drifted: bool = False
    reasons: list[str] = field(default_factory=list)
    labelled_rows: int = 0
    snapshot_json: str = ""
    error: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "features": [f.as_dict() for f in self.features], "drifted_share": self.drifted_share,
            "prediction_drift": self.prediction_drift.as_dict() if self.prediction_drift else None,
            "target_drift": self.target_drift.as_dict() if self.target_drift else None,
            "performance": self.performance, "estimated_performance": self.estimated_performance,
            "performance_drop": self.performance_drop, "performance_degraded": self.performance_degraded,
            "drifted": self.drifted, "reasons": self.reasons,
            "labelled_rows": self.labelled_rows, "error": self.error,
        }


def _method_of(metric_name: str) -> str:
    # e.g. "ValueDrift(column=x0,method=Wasserstein distance (normed),threshold=0.1)"
    start = metric_name.find("method=")
    if start < 0:
        return ""
    rest = metric_name[start + len("method="):]
    return rest[:rest.rfind(",threshold=")] if ",threshold=" in rest else rest.rstrip(")")


# Evidently's statistical tests report a p-value (drift when below the threshold); its distances
# (psi, wasserstein, jensenshannon, kl_div, hellinger...) a distance (drift when at or above it).
P_VALUE_METHODS = {"ks", "chisquare", "z", "fisher_exact", "t_test", "anderson", "mannw", "cramer_von_mises",
                   "g_test", "epps_singleton", "empirical_mmd"}


def _drift_test(score: float, threshold: float, method: str) -> bool:
    if math.isnan(score):
        return False
    is_p_value = method in P_VALUE_METHODS or "p_value" in method
    return score < threshold if is_p_value else score >= threshold


def analyze(ref: Reference, data: WindowData, settings: DriftSettings, *, with_drift: bool = True) -> Analysis:
    result = Analysis()
    p = data.probability
    result.estimated_performance = estimated_performance(p, ref.threshold)
    have = ~np.isnan(data.labels)
    result.labelled_rows = int(have.sum())
    if result.labelled_rows:
        truth = data.labels[have] > 0.5
        result.performance = measured_performance(p[have], truth, ref.threshold)
        # Judge one metric, only when the window holds enough of both classes, and only on a drop that
        # is both larger than the tolerance and statistically significant: with a rare label (fraud
        # ~2-6%) a window of a few hundred rows has a few dozen positives, and its ROC AUC swings by
        # +-0.1 from sampling noise alone (recall and F1 by more), which raised false alarms.
        metric = settings.performance_metric
        positives = int(truth.sum())
        negatives = len(truth) - positives
        enough = min(positives, negatives) >= settings.min_class_labels
        trained = ref.metrics.get(metric)
        if enough and trained is not None and metric in result.performance:
            measured = result.performance[metric]
            drop = trained - measured
            error = metric_standard_error(metric, measured, positives, negatives)
            result.performance_drop[metric] = drop
            if drop > settings.performance_tolerance and drop > settings.performance_z * error:
                result.performance_degraded = True
                result.reasons.append(f"{metric} {measured:.3f} is {drop:.3f} below training ({trained:.3f}), "
                                      f"{drop / error:.1f} standard errors")
    if ref.sample is None:
        result.error = "the version's artifact has no reference sample: no drift tests"
    elif with_drift:
        _drift(ref, data, settings, result)
    result.drifted = bool(result.reasons)
    return result


def _drift(ref: Reference, data: WindowData, settings: DriftSettings, result: Analysis) -> None:
    assert ref.sample is not None
    current: dict[str, Any] = {f: data.numeric[:, i] for i, f in enumerate(ref.numeric)}
    for i, f in enumerate(ref.categorical):
        current[f] = [row[i] if i < len(row) else "" for row in data.categorical]
    metrics: list[Any] = []
    for f in ref.numeric:
        metrics.append(ValueDrift(column=f, **_options(settings.num_method, settings.num_threshold)))
    for f in ref.categorical:
        metrics.append(ValueDrift(column=f, **_options(settings.cat_method, settings.cat_threshold)))
    numeric_columns = list(ref.numeric)
    has_prediction = PREDICTION in ref.sample.columns
    if has_prediction:
        current[PREDICTION] = data.probability
        numeric_columns.append(PREDICTION)
        metrics.append(ValueDrift(column=PREDICTION, **_options(settings.num_method, settings.num_threshold)))
    definition = DataDefinition(numerical_columns=numeric_columns, categorical_columns=list(ref.categorical))
    reference = ref.sample[[*ref.numeric, *ref.categorical] + ([PREDICTION] if has_prediction else [])]
    snapshot = Report(metrics).run(Dataset.from_pandas(pd.DataFrame(current), data_definition=definition),
                                   Dataset.from_pandas(reference, data_definition=definition))
    for item in snapshot.dict()["metrics"]:
        config = item["config"]
        column, threshold = config.get("column"), float(config.get("threshold") or 0.0)
        method = config.get("method") or _method_of(item["metric_name"])
        score = float(item["value"]) if item["value"] is not None else math.nan
        fs = FeatureScore(column, method, score, threshold, _drift_test(score, threshold, method))
        if column == PREDICTION:
            result.prediction_drift = fs
        else:
            result.features.append(fs)
    if result.features:
        result.drifted_share = sum(f.drifted for f in result.features) / len(result.features)
        if result.drifted_share >= settings.drift_share:
            result.reasons.append(f"{result.drifted_share:.0%} of features drifted")
    if result.prediction_drift is not None and result.prediction_drift.drifted:
        result.reasons.append("prediction drift")
    have = ~np.isnan(data.labels)
    if ref.label_rate is not None and have.any():
        rate = float((data.labels[have] > 0.5).mean())
        # Target drift: absolute change of the label rate, against three standard errors of a window
        # this size drawn at the reference rate (at least 0.01): sampling noise of small windows of a
        # rare label (fraud ~2%) is not drift.
        labelled = int(have.sum())
        threshold = max(0.01, 3.0 * math.sqrt(ref.label_rate * (1.0 - ref.label_rate) / labelled))
        score = abs(rate - ref.label_rate)
        result.target_drift = FeatureScore(LABEL, "label_rate_abs_diff", score, threshold, score >= threshold)
    result.snapshot_json = snapshot.dumps()


def _options(method: str, threshold: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if method:
        out["method"] = method
    if threshold is not None:
        out["threshold"] = threshold
    return out


def compress(text: str) -> bytes:
    return gzip.compress(text.encode(), compresslevel=6, mtime=0)


def render_html(snapshot_gz: bytes) -> str:
    """Evidently's HTML (embeds its ~3.8 MB JS bundle) rendered on demand from the stored snapshot."""
    return Snapshot.loads(gzip.decompress(snapshot_gz).decode()).get_html_str(as_iframe=False)


def snapshot_metrics(snapshot_gz: bytes) -> dict[str, Any]:
    """The stored snapshot as Evidently's metric results (what `Snapshot.dict()` gives)."""
    return Snapshot.loads(gzip.decompress(snapshot_gz).decode()).dict()
