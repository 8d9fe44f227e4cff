"""The training pipeline, free of I/O: a labelled, feature-joined DataFrame in, a
calibrated model with its metrics out.

Steps: check the data; split by event time (train = oldest, validation, test =
latest); fit preprocessing on train only; train an MLP (class weights, AdamW, early
stopping on validation loss) seeded and deterministic on CPU; fit a temperature on
validation; choose the threshold on validation; measure on the test slice.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from flywheel.common.errors import FailedPrecondition
from flywheel.predictive import metrics as m
from flywheel.predictive.encoding import Preprocessing, category_indices, numeric_column, numeric_matrix
from flywheel.predictive.spec import ModelSpec
from flywheel.trainer.model import ScoringModule, fit_preprocessing

LABEL = "label"
EVENT_TIME = "event_time"

# torch's seed, determinism flag and thread count are process-wide: one training at a time.
_TORCH_LOCK = threading.Lock()


class TrainingDataError(FailedPrecondition):
    """The training data cannot give a model (too few rows, one class, missing features...)."""


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    validation_loss: float
    validation_roc_auc: float


# progress(stage, fraction of the training step done, the epoch that just ended or None)
Progress = Callable[[str, float, EpochMetrics | None], None]


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


@dataclass
class TrainedModel:
    module: ScoringModule
    preprocessing: Preprocessing
    threshold: float
    temperature: float
    logit_offset: float
    # On the test slice (the latest rows), at `threshold`.
    metrics: dict[str, float]
    validation_metrics: dict[str, float]
    epochs: list[EpochMetrics]
    best_epoch: int
    splits: Splits
    # Validation NLL before and after temperature scaling.
    nll_before_calibration: float
    nll_after_calibration: float
    params: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities of raw rows (the same computation as the TorchScript artifact)."""
        return predict(self.module, self.preprocessing, frame)


def predict(module: nn.Module, prep: Preprocessing, frame: Any) -> np.ndarray:
    numeric = torch.from_numpy(numeric_matrix(frame, prep))
    categorical = torch.from_numpy(category_indices(frame, prep))
    with torch.no_grad():
        return module(numeric, categorical).numpy().astype(np.float64)


@contextlib.contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seeded, deterministic torch on a fixed number of CPU threads; restores the settings after."""
    with _TORCH_LOCK:
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        was_threads = torch.get_num_threads()
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(max(1, threads))
        torch.manual_seed(seed)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
            torch.set_num_threads(was_threads)


def check_training_frame(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The rows usable for training, sorted by event time; TrainingDataError says what is wrong."""
    needed = [EVENT_TIME, LABEL, *spec.feature_names]
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        raise TrainingDataError(f"the training set has no column(s) {', '.join(absent)}: the feature service "
                                f"{spec.features.feature_service!r} does not provide them")
    frame = frame[frame[LABEL].notna()]
    rows = len(frame)
    if rows == 0:
        raise TrainingDataError("no labelled rows in the training window")
    if rows < spec.min_rows:
        raise TrainingDataError(f"only {rows} labelled rows in the training window; the spec needs at least "
                                f"min_rows = {spec.min_rows}")
    positives = int(frame[LABEL].astype(bool).sum())
    if positives in (0, rows):
        value = "true" if positives else "false"
        raise TrainingDataError(f"the training set has only one class: all {rows} labels are {value}; "
                                "a classifier needs both")
    empty = [f for f in spec.numeric if not np.isfinite(numeric_column(frame[f])).any()]
    empty += [f for f in spec.categorical if frame[f].isna().all()]
    if empty:
        raise TrainingDataError(f"feature(s) {', '.join(empty)} have no values in the training window (all null): "
                                f"check that the feature store has data for {spec.features.feature_service!r}")
    frame = frame.assign(**{LABEL: frame[LABEL].astype(bool)})
    return frame.sort_values(EVENT_TIME, kind="mergesort").reset_index(drop=True)


def split_by_time(frame: pd.DataFrame, spec: ModelSpec) -> Splits:
    """Oldest rows train, the next validate, the latest test (frame sorted by event time)."""
    rows = len(frame)
    n_val = max(1, round(rows * spec.split.validation))
    n_test = max(1, round(rows * spec.split.test))
    n_train = rows - n_val - n_test
    splits = Splits(frame.iloc[:n_train], frame.iloc[n_train:n_train + n_val], frame.iloc[n_train + n_val:])
    for name, part in (("training", splits.train), ("validation", splits.validation), ("test", splits.test)):
        positives = int(part[LABEL].sum())
        if positives in (0, len(part)):
            raise TrainingDataError(
                f"the {name} slice ({len(part)} rows from {part[EVENT_TIME].iloc[0]} to {part[EVENT_TIME].iloc[-1]})"
                f" has only one class ({positives} positives): widen the window or collect more labels")
    return splits


def class_weights(labels: np.ndarray, mode: str) -> tuple[float, float]:
    """(negative weight, positive weight); 'balanced' = n / (2 * n_class)."""
    if mode == "none":
        return 1.0, 1.0
    n, positives = labels.size, float(labels.sum())
    return n / (2.0 * (n - positives)), n / (2.0 * positives)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimizing the NLL of sigmoid(logits / T); never worse than T = 1.

    Golden-section search over log T in [log 0.05, log 20] (the NLL is unimodal in T).
    """
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(logits, y, math.exp(a)), _nll(logits, y, math.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(logits, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(logits, y, math.exp(b))
    best = math.exp((lo + hi) / 2)
    return best if _nll(logits, y, best) <= _nll(logits, y, 1.0) else 1.0


def _tensors(frame: pd.DataFrame, prep: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(numeric_matrix(frame, prep)), torch.from_numpy(category_indices(frame, prep))


def train(frame: pd.DataFrame, spec: ModelSpec, *, progress: Progress | None = None, threads: int = 1) -> TrainedModel:
    """Train, calibrate and evaluate a model of `spec` on `frame`.

    `frame` has one row per labelled example: `event_time`, `label` (bool) and one column
    per feature of the spec (raw values; None/NaN = missing). Deterministic for a given
    frame, spec and thread count.
    """
    report = progress or (lambda stage, fraction, epoch: None)
    frame = check_training_frame(frame, spec)
    splits = split_by_time(frame, spec)
    prep = fit_preprocessing(splits.train, spec.numeric, spec.log_transform, spec.categorical)
    params = spec.training
    y_train = splits.train[LABEL].to_numpy(dtype=np.float64)
    y_val = splits.validation[LABEL].to_numpy(dtype=np.float64)
    y_test = splits.test[LABEL].to_numpy(dtype=np.float64)
    w_neg, w_pos = class_weights(y_train, params.class_weight)

    with deterministic(params.seed, threads):
        module = ScoringModule(prep, spec.model.hidden, spec.model.dropout)
        # Weighting shifts the optimal logit by log(w_pos / w_neg); the offset undoes it.
        module.logit_offset.fill_(-math.log(w_pos / w_neg))
        with torch.no_grad():
            x_train = module.encode(*_tensors(splits.train, prep))
            x_val = module.encode(*_tensors(splits.validation, prep))
        t_train = torch.from_numpy(y_train.astype(np.float32))
        t_val = torch.from_numpy(y_val.astype(np.float32))
        sample_w_train = torch.where(t_train > 0.5, torch.tensor(w_pos), torch.tensor(w_neg))
        sample_w_val = torch.where(t_val > 0.5, torch.tensor(w_pos), torch.tensor(w_neg))
        optimizer = torch.optim.AdamW(module.mlp.parameters(), lr=params.learning_rate,
                                      weight_decay=params.weight_decay)
        generator = torch.Generator().manual_seed(params.seed)
        loss_fn = nn.BCEWithLogitsLoss(reduction="none")

        epochs: list[EpochMetrics] = []
        best_loss, best_epoch, best_state, waited = math.inf, 0, copy.deepcopy(module.state_dict()), 0
        for epoch in range(1, params.epochs + 1):
            module.train()
            order = torch.randperm(x_train.shape[0], generator=generator)
            total, seen = 0.0, 0
            for start in range(0, x_train.shape[0], params.batch_size):
                batch = order[start:start + params.batch_size]
                optimizer.zero_grad()
                losses = loss_fn(module.logits_of(x_train[batch]), t_train[batch])
                loss = (losses * sample_w_train[batch]).mean()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * batch.numel()
                seen += batch.numel()
            module.eval()
            with torch.no_grad():
                val_logits = module.logits_of(x_val)
                val_loss = float((loss_fn(val_logits, t_val) * sample_w_val).mean())
            epochs.append(EpochMetrics(epoch, total / seen, val_loss, m.roc_auc(y_val, val_logits.numpy())))
            if val_loss < best_loss - 1e-7:
                best_loss, best_epoch, waited = val_loss, epoch, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                waited += 1
            report(f"epoch {epoch}/{params.epochs}", epoch / params.epochs, epochs[-1])
            if waited >= params.patience:
                break
        module.load_state_dict(best_state)
        module.eval()

        with torch.no_grad():
            val_logits_np = (module.logits_of(x_val) + module.logit_offset).numpy().astype(np.float64)
        nll_before = _nll(val_logits_np, y_val, 1.0)
        temperature = fit_temperature(val_logits_np, y_val) if spec.calibration == "temperature" else 1.0
        module.temperature.fill_(temperature)
        nll_after = _nll(val_logits_np, y_val, temperature)

        p_val = predict(module, prep, splits.validation)
        threshold = m.max_f1_threshold(y_val, p_val) if spec.threshold == "max_f1" else float(spec.threshold)
        p_test = predict(module, prep, splits.test)
    report("evaluated", 1.0, None)

    test_metrics = m.binary_metrics(y_test, p_test, threshold)
    return TrainedModel(
        module=module, preprocessing=prep, threshold=threshold, temperature=temperature,
        logit_offset=float(module.logit_offset), metrics=test_metrics,
        validation_metrics=m.binary_metrics(y_val, p_val, threshold), epochs=epochs, best_epoch=best_epoch,
        splits=splits, nll_before_calibration=nll_before, nll_after_calibration=nll_after,
        params={"class_weights": {"negative": w_neg, "positive": w_pos}, "best_epoch": best_epoch,
                "epochs_run": len(epochs)},
    )


def snapshot_id(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """sha256 of the training set: its column names and every row's values, in row order."""
    digest = hashlib.sha256(json.dumps(list(columns)).encode())
    values = [frame[c].tolist() for c in columns]
    for row in zip(*values, strict=True):
        digest.update(b"\n")
        digest.update(json.dumps([_canonical(v) for v in row], separators=(",", ":")).encode())
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else repr(value)
    if isinstance(value, bool | int | str):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, np.generic):
        return _canonical(value.item())
    return str(value)
