"""The model artifact: one tar.gz holding `model.json`, `model.pt` and `reference_profile.json`.

- `model.json`: spec, feature order, input schema (tensors, vocabularies), preprocessing
  parameters, threshold, temperature, metrics, epochs, run id;
- `model.pt`: a TorchScript module `(numeric float32 [N, n_numeric] raw values with NaN for
  missing, categorical int64 [N, n_categorical] vocabulary indices) -> probabilities [N]`,
  loadable with nothing but `torch.jit.load`;
- `reference_profile.json`: the training data profile for drift detection.

`load_model` reads it back as a `ScoringModel` that scores columns of raw values.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import tarfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flywheel.trainer.model import Preprocessing, category_indices, missing_features, numeric_matrix
from flywheel.trainer.pipeline import TrainedModel
from flywheel.trainer.spec import ModelSpec

MODEL_FORMAT = "flywheel.predictive/v1"
MODEL_JSON = "model.json"
MODEL_PT = "model.pt"
PROFILE_JSON = "reference_profile.json"


def to_json_safe(value: Any) -> Any:
    """NaN and infinities become null, so the JSON is valid for every reader."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return to_json_safe(value.item())
    return value


def _dumps(value: Any) -> bytes:
    return json.dumps(to_json_safe(value), indent=1, allow_nan=False).encode()


def script_module(trained: TrainedModel) -> bytes:
    """The TorchScript bytes of the trained module (eval mode)."""
    trained.module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # TorchScript is what the inference service loads (torch.jit.load); torch marks it deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(trained.module), buffer)
    return buffer.getvalue()


def model_metadata(trained: TrainedModel, spec: ModelSpec, *, run_id: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    prep = trained.preprocessing
    return {
        "format": MODEL_FORMAT,
        "model_name": spec.name,
        "run_id": run_id,
        "spec": spec.model_dump(mode="json"),
        "feature_names": [*prep.numeric, *prep.categorical],
        "input_schema": {
            "numeric": {"tensor": 0, "dtype": "float32", "shape": [-1, len(prep.numeric)], "features": prep.numeric,
                        "missing": "NaN (or +-inf): imputed with the training median"},
            "categorical": {"tensor": 1, "dtype": "int64", "shape": [-1, len(prep.categorical)],
                            "features": prep.categorical, "vocab": prep.vocab,
                            "other_index": {f: prep.other_index(f) for f in prep.categorical},
                            "unknown": "any index outside 0..len(vocab)-1 (e.g. -1) means other"},
        },
        "output": {"dtype": "float32", "shape": [-1], "meaning": "calibrated P(label = true)"},
        "preprocessing": prep.to_json(),
        "encoded_inputs": prep.encoded_names,
        "threshold": trained.threshold,
        "temperature": trained.temperature,
        "logit_offset": trained.logit_offset,
        "metrics": trained.metrics,
        "validation_metrics": trained.validation_metrics,
        "calibration": {"nll_before": trained.nll_before_calibration, "nll_after": trained.nll_after_calibration},
        "epochs": [asdict(e) for e in trained.epochs],
        "best_epoch": trained.best_epoch,
        "rows": {"train": len(trained.splits.train), "validation": len(trained.splits.validation),
                 "test": len(trained.splits.test)},
        "torch_version": torch.__version__,
        **extra,
    }


def build_artifact(trained: TrainedModel, spec: ModelSpec, profile: Mapping[str, Any], *, run_id: str,
                   extra: Mapping[str, Any] | None = None) -> bytes:
    """The tar.gz bytes of the artifact (members in a fixed order, timestamps zeroed)."""
    model_pt = script_module(trained)
    profile_json = _dumps(profile)
    metadata = model_metadata(trained, spec, run_id=run_id, extra=extra or {})
    metadata["files"] = {MODEL_PT: hashlib.sha256(model_pt).hexdigest(),
                         PROFILE_JSON: hashlib.sha256(profile_json).hexdigest()}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((MODEL_JSON, _dumps(metadata)), (MODEL_PT, model_pt), (PROFILE_JSON, profile_json)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


class ScoringModel:
    """A loaded artifact: scores columns of raw feature values with the TorchScript module."""

    def __init__(self, metadata: dict[str, Any], module: torch.jit.ScriptModule, profile: dict[str, Any]) -> None:
        if metadata.get("format") != MODEL_FORMAT:
            raise ValueError(f"not a {MODEL_FORMAT} artifact (format {metadata.get('format')!r})")
        self.metadata = metadata
        self.module = module.eval()
        self.profile = profile
        self.preprocessing = Preprocessing.from_json(metadata["preprocessing"])

    @property
    def name(self) -> str:
        return str(self.metadata["model_name"])

    @property
    def feature_names(self) -> list[str]:
        return list(self.metadata["feature_names"])

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.metadata["metrics"])

    def encode(self, rows: Mapping[str, Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The two input tensors of `model.pt` for columns of raw values (feature name -> values)."""
        absent = missing_features(rows, self.preprocessing)
        if absent:
            raise ValueError(f"missing feature column(s): {', '.join(absent)}")
        lengths = {len(rows[f]) for f in self.feature_names}
        if len(lengths) > 1:
            raise ValueError(f"feature columns differ in length: {sorted(lengths)}")
        return (torch.from_numpy(numeric_matrix(rows, self.preprocessing)),
                torch.from_numpy(category_indices(rows, self.preprocessing)))

    def predict_proba(self, rows: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Calibrated P(label = true) per row; `rows` maps each feature name to its values."""
        numeric, categorical = self.encode(rows)
        with torch.no_grad():
            return self.module(numeric, categorical).numpy().astype(np.float64)

    def predict(self, rows: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """True where the probability reaches the model's threshold."""
        return self.predict_proba(rows) >= self.threshold


def read_artifact(data: bytes) -> dict[str, bytes]:
    """The members of an artifact by name."""
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for info in tar.getmembers():
            if info.isfile() and info.name in (MODEL_JSON, MODEL_PT, PROFILE_JSON):
                handle = tar.extractfile(info)
                assert handle is not None
                members[info.name] = handle.read()
    absent = [n for n in (MODEL_JSON, MODEL_PT, PROFILE_JSON) if n not in members]
    if absent:
        raise ValueError(f"artifact lacks {', '.join(absent)}")
    return members


def load_model(source: str | Path | bytes) -> ScoringModel:
    """Load an artifact from a path or its bytes."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    members = read_artifact(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(io.BytesIO(members[MODEL_PT]), map_location="cpu")
    return ScoringModel(json.loads(members[MODEL_JSON]), module, json.loads(members[PROFILE_JSON]))
