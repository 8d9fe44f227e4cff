"""The `flywheel.predictive/v1` artifact: one tar.gz holding `model.json`, `model.pt` and
`reference_profile.json`. The one writer and the one reader of that tar; torch-free.

- `model.json`: the format, model name, feature order, input schema (tensors, vocabularies),
  threshold and whatever the producer adds (the trainer: spec, preprocessing, metrics, run id...);
  `files` holds the sha256 of the other two members;
- `model.pt`: a TorchScript module `(numeric float32 [N, n_numeric] raw values with NaN for
  missing, categorical int64 [N, n_categorical] vocabulary indices) -> probabilities [N]`,
  loadable with nothing but `torch.jit.load` (`flywheel.predictive.scoring` does that);
- `reference_profile.json`: the training data profile, for drift detection.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODEL_FORMAT = "flywheel.predictive/v1"
MODEL_JSON = "model.json"
MODEL_PT = "model.pt"
PROFILE_JSON = "reference_profile.json"
MEMBERS = (MODEL_JSON, MODEL_PT, PROFILE_JSON)
OUTPUT = {"dtype": "float32", "shape": [-1], "meaning": "calibrated P(label = true)"}


def to_json_safe(value: Any) -> Any:
    """NaN and infinities become null (and numpy scalars Python ones), so the JSON is valid for every reader."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return to_json_safe(value.item())
    return value


def json_bytes(value: Any) -> bytes:
    """`value` as the JSON bytes of an artifact member (null for NaN, never invalid JSON)."""
    return json.dumps(to_json_safe(value), indent=1, allow_nan=False).encode()


@dataclass(frozen=True)
class InputSchema:
    """The model's two input tensors: which feature fills each column, and the categorical vocabularies
    (index len(vocab) of a feature, or any index outside 0..len(vocab)-1, is "other")."""

    numeric: list[str]
    categorical: list[str]
    vocab: dict[str, list[str]] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        """Every input feature, in the order the model consumes them: numeric, then categorical."""
        return [*self.numeric, *self.categorical]

    def to_json(self) -> dict[str, Any]:
        return {
            "numeric": {"tensor": 0, "dtype": "float32", "shape": [-1, len(self.numeric)], "features": self.numeric,
                        "missing": "NaN (or +-inf): imputed by the model"},
            "categorical": {"tensor": 1, "dtype": "int64", "shape": [-1, len(self.categorical)],
                            "features": self.categorical, "vocab": self.vocab,
                            "other_index": {f: len(self.vocab[f]) for f in self.categorical},
                            "unknown": "any index outside 0..len(vocab)-1 (e.g. -1) means other"},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputSchema:
        numeric = [str(f) for f in data.get("numeric", {}).get("features", [])]
        categorical = [str(f) for f in data.get("categorical", {}).get("features", [])]
        vocab = data.get("categorical", {}).get("vocab") or {}
        return cls(numeric, categorical, {f: [str(c) for c in vocab.get(f, [])] for f in categorical})


@dataclass(frozen=True)
class Artifact:
    """A read artifact: its parsed `model.json` and profile, and the TorchScript bytes when asked for."""

    metadata: dict[str, Any]
    profile: dict[str, Any]
    model_pt: bytes | None = None
    schema: InputSchema = field(init=False)

    def __post_init__(self) -> None:
        if "input_schema" not in self.metadata:
            raise ValueError(f"{MODEL_JSON} has no input_schema")
        object.__setattr__(self, "schema", InputSchema.from_json(self.metadata["input_schema"]))

    @property
    def name(self) -> str:
        return str(self.metadata.get("model_name", ""))

    @property
    def threshold(self) -> float:
        return float(self.metadata.get("threshold", 0.5))

    @property
    def metrics(self) -> dict[str, float]:
        """The producer's metrics (numbers only)."""
        return {k: float(v) for k, v in (self.metadata.get("metrics") or {}).items() if isinstance(v, int | float)}


def write_artifact(*, name: str, schema: InputSchema, model_pt: bytes, threshold: float,
                   profile: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None) -> bytes:
    """The tar.gz bytes of an artifact (members in a fixed order, timestamps zeroed: same input, same bytes).

    `metadata` adds to (and may refine) the format's keys in `model.json`.
    """
    profile_json = json_bytes(profile or {})
    model = {
        "format": MODEL_FORMAT, "model_name": name, "feature_names": schema.feature_names,
        "input_schema": schema.to_json(), "output": OUTPUT, "threshold": float(threshold),
        **(metadata or {}),
        "files": {MODEL_PT: hashlib.sha256(model_pt).hexdigest(),
                  PROFILE_JSON: hashlib.sha256(profile_json).hexdigest()},
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in ((MODEL_JSON, json_bytes(model)), (MODEL_PT, model_pt), (PROFILE_JSON, profile_json)):
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def _members(data: bytes, names: Sequence[str]) -> dict[str, bytes]:
    """The members `names` of an artifact that it holds, by name (others are skipped, not read)."""
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for info in tar.getmembers():
            if info.isfile() and info.name in names:
                handle = tar.extractfile(info)
                assert handle is not None
                members[info.name] = handle.read()
    return members


def read_artifact(data: bytes, *, with_model: bool = True) -> Artifact:
    """Parse an artifact; ValueError when it is not a `flywheel.predictive/v1` one or lacks a member.

    Without `with_model`, `model.pt` is neither needed nor kept (readers that never score). A missing
    profile reads as an empty one.
    """
    needed = (MODEL_JSON, MODEL_PT) if with_model else (MODEL_JSON,)
    members = _members(data, (*needed, PROFILE_JSON))
    absent = [n for n in needed if n not in members]
    if absent:
        raise ValueError(f"artifact lacks {', '.join(absent)}")
    metadata = json.loads(members[MODEL_JSON])
    if not isinstance(metadata, dict) or metadata.get("format") != MODEL_FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise ValueError(f"not a {MODEL_FORMAT} artifact (format {found!r})")
    profile = json.loads(members.get(PROFILE_JSON) or b"{}")
    return Artifact(metadata, profile if isinstance(profile, dict) else {}, members.get(MODEL_PT))
