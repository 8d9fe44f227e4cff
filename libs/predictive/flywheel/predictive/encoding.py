"""From columns of raw feature values to the two inputs of a predictive model, in numpy (no pandas, no torch).

A model consumes `numeric`: float32 [N, n_numeric] raw values, NaN where missing, and
`categorical`: int64 [N, n_categorical] vocabulary indices, where any index outside a
feature's vocabulary (e.g. -1) means "other". `numeric_matrix` and `category_indices` build
them; training and every consumer of an artifact use the same two functions.

`Preprocessing` is what the trainer fits on its training slice (imputation, scaling,
vocabularies); `model.json` carries it so anyone can see what the model does to its inputs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

OTHER = "__other__"


class FeatureLayout(Protocol):
    """Which columns a model reads, in order, and each categorical feature's vocabulary."""

    @property
    def numeric(self) -> Sequence[str]: ...

    @property
    def categorical(self) -> Sequence[str]: ...

    @property
    def vocab(self) -> Mapping[str, Sequence[str]]: ...


@dataclass(frozen=True)
class Preprocessing:
    """Parameters fitted on the training slice only."""

    numeric: list[str]
    # Per numeric feature: log1p(max(x, 0)) before standardizing.
    log_transform: list[bool]
    # Per numeric feature, in the transformed space: the value imputed when missing, and the scaling.
    median: list[float]
    mean: list[float]
    std: list[float]
    # Numeric features that had missing values in training and get a 0/1 "was missing" input.
    missing_indicator: list[str]
    categorical: list[str]
    # Per categorical feature: known categories; index len(vocab) is the "other" bucket.
    vocab: dict[str, list[str]]

    def other_index(self, feature: str) -> int:
        return len(self.vocab[feature])

    @property
    def input_width(self) -> int:
        """Width of the encoded vector the MLP sees."""
        return len(self.numeric) + len(self.missing_indicator) + sum(len(v) + 1 for v in self.vocab.values())

    @property
    def encoded_names(self) -> list[str]:
        """Names of the encoded inputs, in MLP input order."""
        names = [*self.numeric, *(f"{f}__missing" for f in self.missing_indicator)]
        for feature in self.categorical:
            names += [f"{feature}={c}" for c in self.vocab[feature]] + [f"{feature}={OTHER}"]
        return names

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def numeric_column(values: Any) -> np.ndarray:
    """Raw values (numbers, bools, None, NaN, numeric strings) as float64, NaN where missing."""
    dtype = getattr(values, "dtype", None)
    if dtype is not None and hasattr(values, "to_numpy"):  # a pandas Series, without importing pandas
        if dtype.kind in "biuf":
            return values.to_numpy(dtype=np.float64, na_value=np.nan)
        values = values.tolist()
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        out = np.array([_number(v) for v in list(values)], dtype=np.float64)
    out = out.reshape(-1).copy()
    out[~np.isfinite(out)] = np.nan
    return out


def _number(value: Any) -> float:
    """One raw value as a number; NaN when it is missing or not a number."""
    if value is None:
        return math.nan
    try:
        return float(value)  # numbers, bools (1.0 / 0.0) and numeric strings
    except (TypeError, ValueError):
        return math.nan


def category_key(value: Any) -> str | None:
    """The vocabulary key of a raw categorical value; None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or _is_pandas_na(value):
        return None
    return str(value)


def _is_pandas_na(value: Any) -> bool:
    # pandas' NA can only exist when pandas was imported by someone else: no import here.
    pandas = sys.modules.get("pandas")
    return pandas is not None and value is pandas.NA


def numeric_matrix(columns: Mapping[str, Any], layout: FeatureLayout) -> np.ndarray:
    """[N, n_numeric] float32 of raw values in `layout.numeric` order (NaN = missing)."""
    if not layout.numeric:
        return np.zeros((_length(columns), 0), dtype=np.float32)
    return np.stack([numeric_column(columns[f]) for f in layout.numeric], axis=1).astype(np.float32)


def category_indices(columns: Mapping[str, Any], layout: FeatureLayout) -> np.ndarray:
    """[N, n_categorical] int64 vocabulary indices; unknown or missing -> the "other" index."""
    if not layout.categorical:
        return np.zeros((_length(columns), 0), dtype=np.int64)
    out = []
    for feature in layout.categorical:
        lookup = {c: i for i, c in enumerate(layout.vocab.get(feature, ()))}
        other = len(lookup)
        out.append(np.fromiter((lookup.get(category_key(v), other) for v in columns[feature]),  # type: ignore[arg-type]
                               dtype=np.int64))
    return np.stack(out, axis=1)


def _length(columns: Mapping[str, Any]) -> int:
    first = next(iter(columns.values()), [])
    return len(first)


def missing_features(columns: Mapping[str, Any], layout: FeatureLayout) -> list[str]:
    return [f for f in (*layout.numeric, *layout.categorical) if f not in columns]
