"""The scoring model: preprocessing fitted on the training slice and an MLP, in one
TorchScript-able module that takes RAW inputs and returns calibrated probabilities.

Inputs of `ScoringModule.forward`:
- `numeric`: float tensor [N, n_numeric] of raw values, NaN (or +-inf) where missing;
- `categorical`: int64 tensor [N, n_categorical] of vocabulary indices, where any index
  outside a feature's vocabulary (e.g. -1) means "other".
Output: P(label = true) for each row, [N] float32.

`flywheel.predictive.encoding` turns columns of raw values into those tensors (training and
every consumer of the artifact use it) and holds `Preprocessing`, which this module fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from flywheel.predictive.encoding import Preprocessing, category_key, numeric_column


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
