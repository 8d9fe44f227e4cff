"""The guard's trained detectors as one artifact: a logistic model per classifier head on hashed
text features (`features.py`) and the groundedness model on lexical support features
(`grounding.py`).

On disk (a directory; the registry stores it as a tar like any model directory):
    detectors.json  format, feature settings, per head its bias and decision threshold, the grounding
                    model's coefficients, and the held-out metrics measured when it was trained
    weights.npz     per head `<head>.indices` (int32) and `<head>.values` (float32): the nonzero weights
                    (a head has weights only for features seen in training: ~10k of 2**18), dense in memory

The guard ships one trained on its data in `flywheel/guard/shipped_detectors/` (~0.2 MB): the first start
registers it, so no start waits for training (`flywheel guard train --out` writes it again).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.common import grounding
from flywheel.guard import features

FORMAT = "flywheel-guard-detectors/1"
HEADS = ("injection", "toxicity", "investment_advice", "other_customer_data")
TOPICS = ("investment_advice", "other_customer_data")
MANIFEST = "detectors.json"
WEIGHTS = "weights.npz"
SHIPPED_DIR = Path(__file__).parent / "shipped_detectors"


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, x))))


@dataclass
class Detectors:
    """Scores texts; immutable once built (a new version is a new object, swapped in whole)."""

    bits: int
    heads: tuple[str, ...]
    weights: np.ndarray
    biases: np.ndarray
    thresholds: dict[str, float]
    grounding_coef: np.ndarray
    grounding_bias: float
    grounding_threshold: float
    metrics: dict[str, Any] = field(default_factory=dict)
    # The registry version it was loaded from ("" when built in memory).
    name: str = ""
    version: int = 0

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}" if self.name else "unregistered"

    def scores(self, text: str) -> dict[str, float]:
        """Each head's probability that `text` belongs to its class."""
        indices, values = features.hashed(text, self.bits)
        if len(indices) == 0:
            return {h: sigmoid(float(b)) for h, b in zip(self.heads, self.biases, strict=True)}
        logits = self.weights[:, indices] @ values + self.biases
        return {h: sigmoid(float(z)) for h, z in zip(self.heads, logits, strict=True)}

    def ungrounded(self, answer_sentences: Sequence[str], sources: Sequence[str],
                   offsets: Sequence[tuple[int, int]] | None = None) -> tuple[float, grounding.Grounding]:
        """Probability that the answer is not supported by `sources`, and the per-sentence support."""
        judged = grounding.judge(answer_sentences, sources, offsets)
        if not judged.judged:
            return 0.0, judged
        z = float(judged.features @ self.grounding_coef + self.grounding_bias)
        return sigmoid(z), judged

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        sparse = {}
        for head, row in zip(self.heads, self.weights, strict=True):
            nonzero = np.flatnonzero(row)
            sparse[f"{head}.indices"] = nonzero.astype(np.int32)
            sparse[f"{head}.values"] = row[nonzero].astype(np.float32)
        with open(directory / WEIGHTS, "wb") as f:  # np.savez stores no timestamps: same weights, same bytes
            np.savez_compressed(f, **sparse)
        manifest = {
            "format": FORMAT, "features": {"kind": "hashed-ngrams", "bits": self.bits,
                                           "words": [1, 2], "char_ngrams_in_words": 4, "hash": "crc32"},
            "heads": {h: {"bias": float(b), "threshold": self.thresholds[h]}
                      for h, b in zip(self.heads, self.biases, strict=True)},
            "grounding": {"features": list(grounding.FEATURES), "coef": self.grounding_coef.tolist(),
                          "bias": self.grounding_bias, "threshold": self.grounding_threshold},
            "metrics": self.metrics,
        }
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return directory


def load(directory: Path, *, name: str = "", version: int = 0) -> Detectors:
    """Load a detectors directory; ValueError saying what is wrong with one that is not."""
    manifest_path = Path(directory) / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{directory} holds no {MANIFEST}: not a guard detectors artifact")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"detectors format {manifest.get('format')!r}; this guard reads {FORMAT!r}")
    heads = tuple(manifest["heads"])
    missing = set(HEADS) - set(heads)
    if missing:
        raise ValueError(f"detectors lack the head(s) {', '.join(sorted(missing))}")
    bits = int(manifest["features"]["bits"])
    weights = np.zeros((len(heads), 1 << bits), dtype=np.float32)
    with np.load(Path(directory) / WEIGHTS) as stored:
        for i, head in enumerate(heads):
            try:
                indices, values = stored[f"{head}.indices"], stored[f"{head}.values"]
            except KeyError:
                raise ValueError(f"{WEIGHTS} has no weights for head {head!r}") from None
            if len(indices) != len(values) or (len(indices) and (indices.min() < 0 or indices.max() >= 1 << bits)):
                raise ValueError(f"{WEIGHTS}: the weights of head {head!r} do not fit 2**{bits} features")
            weights[i, indices] = values
    g = manifest["grounding"]
    return Detectors(bits=bits, heads=heads, weights=np.ascontiguousarray(weights, dtype=np.float32),
                     biases=np.array([manifest["heads"][h]["bias"] for h in heads], dtype=np.float32),
                     thresholds={h: float(manifest["heads"][h]["threshold"]) for h in heads},
                     grounding_coef=np.array(g["coef"], dtype=np.float64), grounding_bias=float(g["bias"]),
                     grounding_threshold=float(g["threshold"]), metrics=manifest.get("metrics", {}),
                     name=name, version=version)
