"""The evaluation itself, free of I/O: metrics of two models on the same labelled rows,
per-slice metrics, reliability bins, and the model's gate turned into checks and a verdict."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from flywheel.predictive import metrics as m
from flywheel.predictive.spec import GateSpec

CALIBRATION_BINS = 10
# Metrics compared and reported; also the keys of the events' metric maps (finite values only).
METRICS = ("roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy", "brier", "log_loss", "ece",
           "positive_rate", "predicted_positive_rate", "threshold", "rows")


def model_metrics(y: Sequence[float] | np.ndarray, prob: Sequence[float] | np.ndarray,
                  threshold: float) -> dict[str, float]:
    """Every metric of one model on labels `y`, at its own decision threshold."""
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    p_arr = np.asarray(prob, dtype=np.float64).ravel()
    result = m.binary_metrics(y_arr, p_arr, threshold)
    predicted = p_arr >= threshold
    result["accuracy"] = float(np.mean(predicted == (y_arr == 1))) if y_arr.size else math.nan
    result["threshold"] = float(threshold)
    return {k: float(result[k]) for k in METRICS}


def finite(values: Mapping[str, float]) -> dict[str, float]:
    """Only the finite values (protobuf maps and JSON carry no NaN; an absent key means undefined)."""
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


@dataclass(frozen=True)
class CalibrationBin:
    lower: float
    upper: float
    rows: int
    mean_predicted: float
    observed_rate: float


def calibration(y: Sequence[float] | np.ndarray, prob: Sequence[float] | np.ndarray,
                bins: int = CALIBRATION_BINS) -> list[CalibrationBin]:
    """Reliability diagram over `bins` equal-width bins (the same bins as the ECE); empty bins are kept
    with rows = 0, so every report has the same shape."""
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    p_arr = np.asarray(prob, dtype=np.float64).ravel()
    index = np.clip((p_arr * bins).astype(np.int64), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = index == b
        rows = int(mask.sum())
        out.append(CalibrationBin(b / bins, (b + 1) / bins, rows, float(p_arr[mask].mean()) if rows else 0.0,
                                  float(y_arr[mask].mean()) if rows else 0.0))
    return out


@dataclass(frozen=True)
class SliceMetrics:
    feature: str
    value: str
    rows: int
    candidate: dict[str, float]
    baseline: dict[str, float]


def slice_metrics(y: np.ndarray, candidate: np.ndarray, candidate_threshold: float,
                  baseline: np.ndarray | None, baseline_threshold: float,
                  categories: Mapping[str, Sequence[Any]], min_rows: int) -> list[SliceMetrics]:
    """Metrics per value of each categorical feature, for values with at least `min_rows` rows
    (smaller slices only add noise). Missing values form the slice "(missing)"."""
    out = []
    for feature, values in categories.items():
        labels = np.array(["(missing)" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                           for v in values], dtype=object)
        for value in sorted(set(labels.tolist())):
            mask = labels == value
            rows = int(mask.sum())
            if rows < min_rows:
                continue
            cand = finite(model_metrics(y[mask], candidate[mask], candidate_threshold))
            base = finite(model_metrics(y[mask], baseline[mask], baseline_threshold)) if baseline is not None \
                else {}
            out.append(SliceMetrics(feature, value, rows, cand, base))
    return out


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    detail: str


def gate_checks(gate: GateSpec, candidate: Mapping[str, float], baseline: Mapping[str, float] | None,
                baseline_version: int = 0) -> list[GateCheck]:
    """The gate's checks on the candidate's (and baseline's) metrics; an undefined metric fails its check.

    - `<metric> >= champion - tolerance`, only when there is a baseline;
    - `<metric> >= floor`;
    - `ece <= max_ece`, when the gate sets it.
    """
    name = gate.metric
    value = candidate.get(name, math.nan)
    checks = []
    if baseline is not None:
        reference = baseline.get(name, math.nan)
        bound = reference - gate.tolerance
        ok = math.isfinite(value) and math.isfinite(reference) and value >= bound
        checks.append(GateCheck(
            f"{name} >= baseline - {gate.tolerance:g}", ok,
            f"candidate {name} {value:.4f} vs baseline v{baseline_version} {reference:.4f} - tolerance "
            f"{gate.tolerance:g} = {bound:.4f}: " + ("ok" if ok else "worse than the baseline")))
    ok = math.isfinite(value) and value >= gate.floor
    checks.append(GateCheck(f"{name} >= {gate.floor:g}", ok,
                            f"candidate {name} {value:.4f} vs floor {gate.floor:g}: " + ("ok" if ok else "below")))
    if gate.max_ece is not None:
        ece = candidate.get("ece", math.nan)
        ok = math.isfinite(ece) and ece <= gate.max_ece
        checks.append(GateCheck(f"ece <= {gate.max_ece:g}", ok,
                                f"candidate ece {ece:.4f} vs max {gate.max_ece:g}: "
                                + ("ok" if ok else "badly calibrated")))
    return checks


def passed(checks: Sequence[GateCheck]) -> bool:
    return bool(checks) and all(c.passed for c in checks)


@dataclass
class Comparison:
    """Everything measured about a candidate against a baseline on one set of rows."""

    rows: int
    positives: int
    candidate: dict[str, float]
    baseline: dict[str, float] | None
    slices: list[SliceMetrics] = field(default_factory=list)
    candidate_calibration: list[CalibrationBin] = field(default_factory=list)
    baseline_calibration: list[CalibrationBin] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "positives": self.positives, "candidate": finite(self.candidate),
                "baseline": finite(self.baseline) if self.baseline is not None else None,
                "slices": [asdict(s) for s in self.slices],
                "candidate_calibration": [asdict(b) for b in self.candidate_calibration],
                "baseline_calibration": [asdict(b) for b in self.baseline_calibration]}


def compare(y: Sequence[float] | np.ndarray, candidate: np.ndarray, candidate_threshold: float,
            baseline: np.ndarray | None, baseline_threshold: float, categories: Mapping[str, Sequence[Any]],
            min_slice_rows: int, bins: int = CALIBRATION_BINS) -> Comparison:
    """Candidate (and baseline) on the same rows: overall metrics, slices, reliability bins."""
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    cand = np.asarray(candidate, dtype=np.float64).ravel()
    base = None if baseline is None else np.asarray(baseline, dtype=np.float64).ravel()
    return Comparison(
        rows=int(y_arr.size), positives=int(y_arr.sum()),
        candidate=model_metrics(y_arr, cand, candidate_threshold),
        baseline=None if base is None else model_metrics(y_arr, base, baseline_threshold),
        slices=slice_metrics(y_arr, cand, candidate_threshold, base, baseline_threshold, categories, min_slice_rows),
        candidate_calibration=calibration(y_arr, cand, bins),
        baseline_calibration=[] if base is None else calibration(y_arr, base, bins))
