"""A loaded `flywheel.predictive/v1` artifact: read with tarfile + json + torch.jit.load only
(the inference service never imports the trainer).
"""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from flywheel.inference.stats import ModelStats

MODEL_FORMAT = "flywheel.predictive/v1"


@dataclass(eq=False)
class LoadedModel:
    """One model version, ready to score: `score(numeric [N, n] float32, categorical [N, k] int64)`."""

    name: str
    version: int
    metadata: dict[str, Any]
    module: Any  # torch.jit.ScriptModule
    numeric_features: list[str]
    categorical_features: list[str]
    # Per categorical feature: category string -> vocabulary index (unknown -> len(vocab), "other").
    lookups: list[dict[bytes, int]] = field(default_factory=list)
    threshold: float = 0.5
    batcher: Any = None  # the adaptive batcher of this version, when batching is on
    stats: ModelStats = field(default_factory=ModelStats)  # Triton-style statistics of this version

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
        with torch.inference_mode():
            out = self.module(torch.from_numpy(numeric), torch.from_numpy(categorical))
        return out.numpy().astype(np.float32, copy=False).reshape(-1)

    def category_indices(self, values: list[bytes], rows: int) -> np.ndarray:
        """Category strings [rows * k] (row-major) -> vocabulary indices [rows, k]; unknown or empty -> other."""
        k = self.n_categorical
        out = np.empty((rows, k), dtype=np.int64)
        for j, lookup in enumerate(self.lookups):
            other = len(lookup)
            column = values[j::k]
            out[:, j] = [lookup.get(v, other) for v in column]
        return out

    def warm(self) -> None:
        self.score(np.zeros((1, self.n_numeric), dtype=np.float32),
                   np.zeros((1, self.n_categorical), dtype=np.int64))


def load_artifact(data: bytes, *, name: str, version: int) -> LoadedModel:
    """Parse and load an artifact (blocking; run it in a worker thread)."""
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for info in tar.getmembers():
            if info.isfile() and info.name in ("model.json", "model.pt"):
                handle = tar.extractfile(info)
                assert handle is not None
                members[info.name] = handle.read()
    absent = [n for n in ("model.json", "model.pt") if n not in members]
    if absent:
        raise ValueError(f"artifact of {name} v{version} lacks {', '.join(absent)}")
    metadata = json.loads(members["model.json"])
    if metadata.get("format") != MODEL_FORMAT:
        raise ValueError(f"{name} v{version} is not a {MODEL_FORMAT} artifact (format {metadata.get('format')!r})")
    schema = metadata["input_schema"]
    numeric = list(schema["numeric"]["features"])
    categorical = list(schema["categorical"]["features"])
    vocab = schema["categorical"].get("vocab", {})
    lookups = [{str(c).encode(): i for i, c in enumerate(vocab[f])} for f in categorical]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(io.BytesIO(members["model.pt"]), map_location="cpu")
    module.eval()
    model = LoadedModel(name=name, version=version, metadata=metadata, module=module, numeric_features=numeric,
                        categorical_features=categorical, lookups=lookups,
                        threshold=float(metadata.get("threshold", 0.5)))
    model.warm()
    return model
