"""A loaded `flywheel.predictive/v1` artifact (read and scored by `flywheel.predictive`), with the
bytes -> vocabulary index lookups of the serving hot path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flywheel.inference.stats import ModelStats
from flywheel.predictive.artifact import read_artifact
from flywheel.predictive.scoring import ScoringModel


@dataclass(eq=False)
class LoadedModel:
    """One model version, ready to score: `score(numeric [N, n] float32, categorical [N, k] int64)`."""

    name: str
    version: int
    metadata: dict[str, Any]
    scoring: ScoringModel
    numeric_features: list[str]
    categorical_features: list[str]
    # Per categorical feature: category string -> vocabulary index (unknown -> len(vocab), "other").
    lookups: list[dict[bytes, int]] = field(default_factory=list)
    threshold: float = 0.5
    batcher: Any = None  # the adaptive batcher of this version, when batching is on
    stats: ModelStats = field(default_factory=ModelStats)  # Triton-style statistics of this version
    # Seconds one single-row scoring took when the version was warmed (inf until measured): the data
    # plane scores small requests of a cheap model on the event loop instead of in a worker thread.
    row_seconds: float = float("inf")

    @property
    def n_numeric(self) -> int:
        return len(self.numeric_features)

    @property
    def n_categorical(self) -> int:
        return len(self.categorical_features)

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.metadata.get("spec")
        return spec if isinstance(spec, dict) else {}

    @property
    def feature_service(self) -> str:
        """The feature service the model's features come from ("" when model.json does not say)."""
        features = self.spec.get("features")
        return str(features.get("feature_service") or "") if isinstance(features, dict) else ""

    @property
    def entity_keys(self) -> list[str]:
        return [str(k) for k in self.spec.get("entity_keys") or []]

    @property
    def entity_key_types(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.spec.get("entity_key_types") or {}).items()}

    def score(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """Calibrated probabilities [N] (float32). Blocking: call it from a worker thread."""
        return self.scoring.score(numeric, categorical)

    def category_indices(self, values: list[bytes], rows: int) -> np.ndarray:
        """Category strings [rows * k] (row-major) -> vocabulary indices [rows, k]; unknown or empty -> other."""
        k = self.n_categorical
        out = np.empty((rows, k), dtype=np.int64)
        for j, lookup in enumerate(self.lookups):
            other = len(lookup)
            column = values[j::k]
            out[:, j] = [lookup.get(v, other) for v in column]
        return out

    def warm(self, timings: int = 20) -> None:
        """Score once (the first call compiles), then measure `row_seconds`: the median of `timings`
        single-row scorings."""
        numeric = np.zeros((1, self.n_numeric), dtype=np.float32)
        categorical = np.zeros((1, self.n_categorical), dtype=np.int64)
        self.score(numeric, categorical)
        took = []
        for _ in range(timings):
            begin = time.perf_counter()
            self.score(numeric, categorical)
            took.append(time.perf_counter() - begin)
        if took:
            self.row_seconds = sorted(took)[len(took) // 2]


def load_artifact(data: bytes, *, name: str, version: int) -> LoadedModel:
    """Parse, load and warm an artifact (blocking; run it in a worker thread)."""
    try:
        artifact = read_artifact(data)
    except ValueError as exc:
        raise ValueError(f"{name} v{version}: {exc}") from None
    schema = artifact.schema
    lookups = [{c.encode(): i for i, c in enumerate(schema.vocab[f])} for f in schema.categorical]
    model = LoadedModel(name=name, version=version, metadata=artifact.metadata, scoring=ScoringModel(artifact),
                        numeric_features=schema.numeric, categorical_features=schema.categorical, lookups=lookups,
                        threshold=artifact.threshold)
    model.warm()
    return model
