"""What the trainer puts in a `flywheel.predictive/v1` artifact (the format and its writer live in
`flywheel.predictive.artifact`): the scripted module, and in `model.json` the spec, preprocessing
parameters, threshold, temperature, metrics, epochs and run id next to the format's own keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch

from flywheel.predictive.artifact import InputSchema, write_artifact
from flywheel.predictive.scoring import to_torchscript
from flywheel.predictive.spec import ModelSpec
from flywheel.trainer.pipeline import TrainedModel


def model_metadata(trained: TrainedModel, spec: ModelSpec, *, run_id: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer's keys of `model.json`."""
    prep = trained.preprocessing
    return {
        "run_id": run_id,
        "spec": spec.model_dump(mode="json"),
        "preprocessing": prep.to_json(),
        "encoded_inputs": prep.encoded_names,
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
    """The tar.gz bytes of the artifact of a trained model."""
    prep = trained.preprocessing
    return write_artifact(
        name=spec.name, schema=InputSchema(list(prep.numeric), list(prep.categorical), dict(prep.vocab)),
        model_pt=to_torchscript(trained.module), threshold=trained.threshold, profile=profile,
        metadata=model_metadata(trained, spec, run_id=run_id, extra=extra or {}))
