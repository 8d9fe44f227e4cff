"""Scoring with an artifact's TorchScript module: the one module of `flywheel.predictive` that needs torch.

`load_model` reads an artifact as a `ScoringModel`, which scores columns of raw feature values
(`predict_proba`) or the two input tensors already built (`score`, the serving hot path). The
input schema in `model.json` is the contract, so any `flywheel.predictive/v1` artifact scores,
whoever built it. `to_torchscript` is the writer's side: the bytes of `model.pt`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flywheel.predictive.artifact import Artifact, InputSchema, read_artifact
from flywheel.predictive.encoding import category_indices, missing_features, numeric_matrix


def to_torchscript(module: nn.Module) -> bytes:
    """The TorchScript bytes of `module` (put in eval mode), as `model.pt` holds them."""
    module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # TorchScript is what serving loads (torch.jit.load); torch marks it deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def load_module(model_pt: bytes) -> torch.jit.ScriptModule:
    """The TorchScript module of `model.pt` bytes, on the CPU, in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(io.BytesIO(model_pt), map_location="cpu")
    return module.eval()


class ScoringModel:
    """A loaded artifact: scores columns of raw feature values with its TorchScript module."""

    def __init__(self, artifact: Artifact) -> None:
        if artifact.model_pt is None:
            raise ValueError("the artifact was read without model.pt: nothing to score with")
        self.module = load_module(artifact.model_pt)
        self.artifact = replace(artifact, model_pt=None)  # loaded: its bytes need not stay in memory

    @property
    def metadata(self) -> dict[str, Any]:
        return self.artifact.metadata

    @property
    def profile(self) -> dict[str, Any]:
        return self.artifact.profile

    @property
    def schema(self) -> InputSchema:
        return self.artifact.schema

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def feature_names(self) -> list[str]:
        return self.schema.feature_names

    @property
    def threshold(self) -> float:
        return self.artifact.threshold

    def encode(self, columns: Mapping[str, Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
        """The two inputs of `model.pt` for columns of raw values (feature name -> values)."""
        absent = missing_features(columns, self.schema)
        if absent:
            raise ValueError(f"missing feature column(s): {', '.join(absent)}")
        lengths = {len(columns[f]) for f in self.feature_names}
        if len(lengths) > 1:
            raise ValueError(f"feature columns differ in length: {sorted(lengths)}")
        return numeric_matrix(columns, self.schema), category_indices(columns, self.schema)

    def score(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """Calibrated probabilities [N] (float32) of numeric float32 [N, n] and categorical int64 [N, k].
        Blocking: serve it from a worker thread."""
        with torch.inference_mode():
            out = self.module(torch.from_numpy(numeric), torch.from_numpy(categorical))
        return out.numpy().astype(np.float32, copy=False).reshape(-1)

    def predict_proba(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Calibrated P(label = true) per row (float64); `columns` maps each feature name to its values."""
        return self.score(*self.encode(columns)).astype(np.float64)

    def predict(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """True where the probability reaches the model's threshold."""
        return self.predict_proba(columns) >= self.threshold


def load_model(source: str | Path | bytes) -> ScoringModel:
    """Load an artifact from a path or its bytes (blocking)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return ScoringModel(read_artifact(data))
