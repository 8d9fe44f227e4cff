"""The reference profile of a model's training data, stored in its artifact so the
monitor can compare live traffic against it (drift) without reading the trainer's data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from flywheel.predictive.encoding import category_key, numeric_column

PROFILE_FORMAT = "flywheel.reference_profile/v1"
QUANTILES = [round(q * 0.05, 2) for q in range(21)]
HISTOGRAM_BINS = 20
MAX_CATEGORIES = 200
OTHER_CATEGORIES = "__other__"


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def numeric_profile(values: np.ndarray) -> dict[str, Any]:
    present = values[np.isfinite(values)]
    profile: dict[str, Any] = {
        "count": int(values.size),
        "missing_share": float(1 - present.size / values.size) if values.size else 0.0,
    }
    if present.size == 0:
        return {**profile, "mean": None, "std": None, "min": None, "max": None, "quantiles": {},
                "histogram": {"bins": [], "counts": []}}
    low, high = float(present.min()), float(present.max())
    if high <= low:  # one value: one bin around it
        high = low + 1.0
    counts, edges = np.histogram(present, bins=HISTOGRAM_BINS, range=(low, high))
    quantiles = np.quantile(present, QUANTILES)
    return {
        **profile,
        "mean": _number(float(present.mean())),
        "std": _number(float(present.std())),
        "min": float(present.min()),
        "max": float(present.max()),
        "quantiles": {f"{q:.2f}": float(v) for q, v in zip(QUANTILES, quantiles, strict=True)},
        # `bins` are the HISTOGRAM_BINS + 1 edges; counts[i] counts edges[i] <= x < edges[i+1] (last closed).
        "histogram": {"bins": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def categorical_profile(values: Sequence[Any]) -> dict[str, Any]:
    keys = [category_key(v) for v in values]
    present = pd.Series([k for k in keys if k is not None], dtype=object)
    total = len(keys)
    frequencies = present.value_counts()
    ranked = sorted(frequencies.items(), key=lambda kv: (-kv[1], kv[0]))
    shares = {str(c): n / total for c, n in ranked[:MAX_CATEGORIES]}
    rest = sum(n for _, n in ranked[MAX_CATEGORIES:])
    if rest:
        shares[OTHER_CATEGORIES] = rest / total
    return {
        "count": total,
        "missing_share": float(1 - len(present) / total) if total else 0.0,
        "distinct": int(frequencies.size),
        # Share of all rows (missing included) per category.
        "frequencies": shares,
    }


PREDICTION = "prediction"


def reference_profile(train: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str], *,
                      label: str = "label", event_time: str = "event_time", sample_rows: int = 2000,
                      seed: int = 0, score: Callable[[pd.DataFrame], np.ndarray] | None = None) -> dict[str, Any]:
    """Per-feature distributions of the training rows, their label rate and a sample of raw rows.

    With `score` (the trained model's calibrated probabilities), the sample also carries the
    model's prediction per row and `prediction` profiles its distribution: the reference for
    prediction drift and for label-free performance estimation.
    """
    sample = train if len(train) <= sample_rows else train.sample(n=sample_rows, random_state=seed).sort_index()
    columns: dict[str, list[Any]] = {}
    for feature in numeric:
        columns[feature] = [_number(v) for v in numeric_column(sample[feature])]
    for feature in categorical:
        columns[feature] = [category_key(v) for v in sample[feature]]
    columns[label] = [bool(v) for v in sample[label]]
    columns[event_time] = [pd.Timestamp(t).isoformat() for t in sample[event_time]]
    prediction = None
    if score is not None:
        probabilities = np.asarray(score(sample), dtype=np.float64)
        columns[PREDICTION] = [_number(float(p)) for p in probabilities]
        prediction = numeric_profile(probabilities)
    return {
        "format": PROFILE_FORMAT,
        "rows": len(train),
        "label_rate": float(train[label].astype(bool).mean()) if len(train) else None,
        "window": {"first_event_time": pd.Timestamp(train[event_time].min()).isoformat() if len(train) else None,
                   "last_event_time": pd.Timestamp(train[event_time].max()).isoformat() if len(train) else None},
        "numeric": {f: numeric_profile(numeric_column(train[f])) for f in numeric},
        "categorical": {f: categorical_profile(list(train[f])) for f in categorical},
        # The model's calibrated probability on the sample rows (null without a model).
        "prediction": prediction,
        # Raw feature values of up to `sample_rows` training rows (null = missing), column-wise.
        "sample": {"rows": len(sample), "columns": columns},
    }
