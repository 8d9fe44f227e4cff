"""Test and benchmark helpers: a tiny `flywheel.predictive/v1` artifact built from config.

`build_predictive_artifact` makes a valid artifact (written by `flywheel.predictive.artifact`, with
the `model.json` keys of the trainer's that the inference service relies on) holding a TorchScript
MLP of seeded random weights: no training, no data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flywheel.predictive.artifact import InputSchema, write_artifact
from flywheel.predictive.scoring import to_torchscript


class _TinyScoringModule(nn.Module):
    """(numeric float32 [N, n] raw, NaN allowed; categorical int64 [N, k] vocab indices) -> P [N]."""

    def __init__(self, n_numeric: int, category_sizes: list[int], hidden: tuple[int, ...],
                 constant: float) -> None:
        super().__init__()
        self.register_buffer("category_sizes", torch.tensor(category_sizes, dtype=torch.int64).reshape(-1))
        # constant >= 0: every row scores exactly `constant` (models whose answers reveal them).
        self.register_buffer("constant", torch.tensor(float(constant)))
        layers: list[nn.Module] = []
        width = n_numeric + sum(category_sizes)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        x = numeric.to(torch.float32)
        x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))  # NaN / inf -> 0 (imputation)
        parts = [x]
        for j in range(self.category_sizes.shape[0]):
            size = int(self.category_sizes[j])
            index = categorical[:, j].to(torch.int64)
            index = torch.where((index < 0) | (index >= size), torch.full_like(index, size - 1), index)
            parts.append(nn.functional.one_hot(index, size).to(torch.float32))
        p = torch.sigmoid(self.mlp(torch.cat(parts, dim=1)).squeeze(1))
        if bool(self.constant >= 0.0):
            p = torch.full_like(p, float(self.constant))
        return p


def build_predictive_artifact(n_numeric: int = 30, vocab: dict[str, list[str]] | None = None,
                              hidden: tuple[int, ...] = (64, 32), seed: int = 0, threshold: float = 0.5,
                              *, name: str = "fraud", constant: float | None = None,
                              numeric_features: list[str] | None = None, feature_service: str | None = None,
                              entity_keys: list[str] | None = None,
                              entity_key_types: dict[str, str] | None = None) -> bytes:
    """The tar.gz bytes of a `flywheel.predictive/v1` artifact with seeded random weights.

    `vocab` maps each categorical feature to its categories (index len(vocab) = "other");
    `constant` (0..1) makes every prediction that exact probability. `numeric_features` names the numeric
    features (default x0..x{n-1}; it overrides `n_numeric`); `feature_service` + `entity_keys` (+
    `entity_key_types`) write the `spec` that lets requests carry entity ids instead of the features.
    """
    vocab = dict(vocab or {})
    categorical = list(vocab)
    numeric = list(numeric_features) if numeric_features is not None else [f"x{i}" for i in range(n_numeric)]
    torch.manual_seed(seed)
    module = _TinyScoringModule(len(numeric), [len(vocab[f]) + 1 for f in categorical], tuple(hidden),
                                -1.0 if constant is None else constant)
    metadata: dict[str, Any] = {"run_id": f"testing-seed-{seed}", "metrics": {}, "torch_version": torch.__version__}
    if feature_service:  # what the trainer writes (ModelSpec.model_dump), as far as inference reads it
        metadata["spec"] = {"name": name, "kind": "predictive", "features": {"feature_service": feature_service},
                            "entity_keys": list(entity_keys or []), "entity_key_types": dict(entity_key_types or {}),
                            "numeric": numeric, "categorical": categorical}
    return write_artifact(name=name, schema=InputSchema(numeric, categorical, vocab), model_pt=to_torchscript(module),
                          threshold=threshold, metadata=metadata)

