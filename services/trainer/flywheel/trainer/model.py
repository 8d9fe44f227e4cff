"""The scoring model: preprocessing fitted on the training slice and an MLP, in one
TorchScript-able module that takes RAW inputs and returns calibrated probabilities.

Inputs of `ScoringModule.forward`:
- `numeric`: float tensor [N, n_numeric] of raw values, NaN (or +-inf) where missing;
- `categorical`: int64 tensor [N, n_categorical] of vocabulary indices, where any index
  outside a feature's vocabulary (e.g. -1) means "other".
Output: P(label = true) for each row, [N] float32.

`numeric_matrix` and `category_indices` turn columns of raw values into those tensors;
training and every consumer of the artifact use the same two functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

OTHER = "__other__"


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


def fit_preprocessing(train: pd.DataFrame, numeric: Sequence[str], log_transform: Sequence[str],
                      categorical: Sequence[str], max_categories: int = 100) -> Preprocessing:
    """Fit imputation, scaling and vocabularies on the training rows only."""
    logs = set(log_transform)
    medians, means, stds, indicators = [], [], [], []
    for feature in numeric:
        values = _transform(numeric_column(train[feature]), feature in logs)
        present = values[np.isfinite(values)]
        median = float(np.median(present)) if present.size else 0.0
        filled = np.where(np.isfinite(values), values, median)
        std = float(filled.std())
        medians.append(median)
        means.append(float(filled.mean()))
        stds.append(std if std > 1e-12 and math.isfinite(std) else 1.0)
        if present.size < values.size:
            indicators.append(feature)
    vocab: dict[str, list[str]] = {}
    for feature in categorical:
        counts = pd.Series([v for v in (category_key(x) for x in train[feature]) if v is not None]).value_counts()
        # The most frequent categories (ties by name), listed alphabetically; the rest is "other".
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_categories]
        vocab[feature] = sorted(str(c) for c, _ in ranked)
    return Preprocessing(numeric=list(numeric), log_transform=[f in logs for f in numeric], median=medians,
                         mean=means, std=stds, missing_indicator=indicators, categorical=list(categorical),
                         vocab=vocab)


def _transform(values: np.ndarray, log: bool) -> np.ndarray:
    if not log:
        return values
    with np.errstate(invalid="ignore"):
        return np.log1p(np.maximum(values, 0.0))


def numeric_column(values: Any) -> np.ndarray:
    """Raw values (numbers, bools, None, NaN, numeric strings) as float64, NaN where missing."""
    if isinstance(values, pd.Series):
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            return values.to_numpy(dtype=np.float64, na_value=np.nan)
        values = values.tolist()
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        out = pd.to_numeric(pd.Series(list(values), dtype=object).map(
            lambda v: float(v) if isinstance(v, bool) else v), errors="coerce").to_numpy(dtype=np.float64)
    out = out.reshape(-1).copy()
    out[~np.isfinite(out)] = np.nan
    return out


def category_key(value: Any) -> str | None:
    """The vocabulary key of a raw categorical value; None when missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def numeric_matrix(columns: Mapping[str, Any], prep: Preprocessing) -> np.ndarray:
    """[N, n_numeric] float32 of raw values in `prep.numeric` order (NaN = missing)."""
    if not prep.numeric:
        return np.zeros((_length(columns, prep), 0), dtype=np.float32)
    return np.stack([numeric_column(columns[f]) for f in prep.numeric], axis=1).astype(np.float32)


def category_indices(columns: Mapping[str, Any], prep: Preprocessing) -> np.ndarray:
    """[N, n_categorical] int64 vocabulary indices; unknown or missing -> the "other" index."""
    if not prep.categorical:
        return np.zeros((_length(columns, prep), 0), dtype=np.int64)
    out = []
    for feature in prep.categorical:
        lookup = {c: i for i, c in enumerate(prep.vocab[feature])}
        other = len(lookup)
        out.append(np.fromiter((lookup.get(category_key(v), other) for v in columns[feature]),  # type: ignore[arg-type]
                               dtype=np.int64))
    return np.stack(out, axis=1)


def _length(columns: Mapping[str, Any], prep: Preprocessing) -> int:
    first = next(iter(columns.values()), [])
    return len(first)


def missing_features(columns: Mapping[str, Any], prep: Preprocessing) -> list[str]:
    return [f for f in (*prep.numeric, *prep.categorical) if f not in columns]


class ScoringModule(nn.Module):
    """Preprocessing + MLP + calibration; scripted with `torch.jit.script` for the artifact."""

    def __init__(self, prep: Preprocessing, hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.register_buffer("log_mask", torch.tensor(prep.log_transform, dtype=torch.bool).reshape(-1))
        self.register_buffer("median", torch.tensor(prep.median, dtype=torch.float32).reshape(-1))
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32).reshape(-1))
        self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32).reshape(-1))
        positions = {f: i for i, f in enumerate(prep.numeric)}
        self.register_buffer("indicator_index",
                             torch.tensor([positions[f] for f in prep.missing_indicator], dtype=torch.int64))
        # Vocabulary size + 1 ("other") per categorical feature (a buffer: TorchScript-friendly).
        self.register_buffer("category_sizes", torch.tensor([len(prep.vocab[f]) + 1 for f in prep.categorical],
                                                            dtype=torch.int64).reshape(-1))
        # Calibration: p = sigmoid((logit + logit_offset) / temperature). The offset undoes the
        # prior shift of class weighting; the temperature is fitted on the validation slice.
        self.register_buffer("logit_offset", torch.tensor(0.0))
        self.register_buffer("temperature", torch.tensor(1.0))
        layers: list[nn.Module] = []
        width = prep.input_width
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def encode(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        x = numeric.to(torch.float32)
        missing = ~torch.isfinite(x)
        x = torch.where(self.log_mask, torch.log1p(torch.clamp(x, min=0.0)), x)
        x = torch.where(missing, self.median.expand_as(x), x)
        parts = [(x - self.mean) / self.std, missing.index_select(1, self.indicator_index).to(torch.float32)]
        for j in range(self.category_sizes.shape[0]):
            size = int(self.category_sizes[j])
            index = categorical[:, j].to(torch.int64)
            index = torch.where((index < 0) | (index >= size), torch.full_like(index, size - 1), index)
            parts.append(nn.functional.one_hot(index, size).to(torch.float32))
        return torch.cat(parts, dim=1)

    def logits_of(self, encoded: Tensor) -> Tensor:
        """Uncalibrated logits of encoded rows, [N]."""
        return self.mlp(encoded).squeeze(1)

    def calibrate(self, logits: Tensor) -> Tensor:
        return torch.sigmoid((logits + self.logit_offset) / self.temperature)

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        return self.calibrate(self.logits_of(self.encode(numeric, categorical)))
