"""Executing one claimed run: labels known before the window end -> point-in-time features from the
feature store -> training and packaging in a worker thread -> registration. A version is registered
only once everything else worked; every stage is written to the run as it is reached."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from prometheus_client import Counter, Gauge, Histogram

from flywheel.common.clients.ports import FeatureSource, ModelRegistry
from flywheel.common.errors import FlywheelError, Unavailable
from flywheel.predictive.encoding import numeric_column
from flywheel.predictive.spec import ModelSpec, SpecCatalog, apply_params, entity_keys, registry_tags
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg
from flywheel.trainer import pipeline
from flywheel.trainer.artifact import build_artifact
from flywheel.trainer.pipeline import EVENT_TIME, LABEL, EpochMetrics, TrainedModel, TrainingDataError
from flywheel.trainer.profile import reference_profile
from flywheel.trainer.store import FAILED, SUCCEEDED, LabelRow, Run, TrainerStore

log = logging.getLogger(__name__)

CHAMPION = "champion"
# Registry tags of every version a run registers: the run (found again after a crash) and where
# its held-out test slice begins.
RUN_TAG = "run_id"
HOLDOUT_TAG = "holdout_start"

RUNS = Counter("flywheel_trainer_runs_total", "Training runs that ended.", ["model", "status"])
RUN_SECONDS = Histogram("flywheel_trainer_run_seconds", "Wall time of a run, from start to end.", ["model"],
                        buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200))
RUNS_ACTIVE = Gauge("flywheel_trainer_runs_active", "Runs executing in this process.")

# Overall progress of a run: where each stage starts.
PROGRESS_FEATURES = 0.05
PROGRESS_TRAINING = 0.25
PROGRESS_PACKAGING = 0.88
PROGRESS_REGISTERING = 0.95


@dataclass
class RunOutcome:
    """What the worker thread produced for a run."""

    trained: TrainedModel
    snapshot_id: str
    artifact: bytes


class RunCancelled(Exception):
    """Raised inside the training thread when the run was interrupted."""


def training_frame(spec: ModelSpec, labels: list[LabelRow], names: list[str], rows: list[list[Any]]) -> pd.DataFrame:
    """One row per label: entity keys, event time, label, then the spec's features (raw values)."""
    position = {n: i for i, n in enumerate(names)}
    data: dict[str, Any] = {k: [label.entity_keys[k] for label in labels] for k in spec.entity_keys}
    data[EVENT_TIME] = pd.to_datetime([label.event_time for label in labels], utc=True)
    data[LABEL] = [bool(label.flag) for label in labels]
    for feature in spec.numeric:
        data[feature] = numeric_column([row[position[feature]] for row in rows])
    for feature in spec.categorical:
        data[feature] = pd.Series([row[position[feature]] for row in rows], dtype=object)
    return pd.DataFrame(data)


def holdout_start(trained: TrainedModel) -> datetime:
    """When the test slice (the latest rows, never trained on) begins."""
    return pd.Timestamp(trained.splits.test[EVENT_TIME].min()).to_pydatetime()


def finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}


class RunExecutor:
    """Executes claimed runs; `notify` tells the run's watchers each time it changes."""

    def __init__(self, store: TrainerStore, catalog: SpecCatalog, features: FeatureSource, registry: ModelRegistry,
                 *, code_version: str, notify: Callable[[str], None], torch_threads: int = 1,
                 profile_sample_rows: int = 2000, poll_interval: float = 1.0, label_wait_seconds: float = 0.0) -> None:
        self.store = store
        self.catalog = catalog
        self.features = features
        self.registry = registry
        self.code_version = code_version
        self.notify = notify
        self.torch_threads = torch_threads
        self.profile_sample_rows = profile_sample_rows
        self.poll_interval = poll_interval
        self.label_wait_seconds = label_wait_seconds

    async def execute(self, run: Run) -> None:
        """Take a claimed run to SUCCEEDED or FAILED. Cancelling the task fails the run and stops its training
        thread at the next progress report."""
        cancelled = threading.Event()
        started = time.monotonic()
        RUNS_ACTIVE.inc()
        log.info("run started", extra={"run_id": run.id, "model": run.model_name,
                                       "window": f"{run.window_start.isoformat()}/{run.window_end.isoformat()}"})
        try:
            version = await self._run(run, cancelled)
        except asyncio.CancelledError:
            cancelled.set()
            await self._fail(run, "interrupted: the trainer stopped while the run was in progress")
            raise
        except FlywheelError as exc:
            await self._fail(run, str(exc))
        except Exception as exc:
            log.exception("run failed unexpectedly", extra={"run_id": run.id})
            await self._fail(run, f"internal error: {type(exc).__name__}: {exc}")
        else:
            RUNS.labels(run.model_name, "succeeded").inc()
            log.info("run succeeded", extra={"run_id": run.id, "model": run.model_name, "version": version})
        finally:
            RUNS_ACTIVE.dec()
            RUN_SECONDS.labels(run.model_name).observe(time.monotonic() - started)

    async def _stage(self, run: Run, stage: str, progress: float, **values: Any) -> None:
        run.stage, run.progress = stage, progress
        await self.store.update(run.id, stage=stage, progress=progress, **values)
        self.notify(run.id)

    async def _fail(self, run: Run, reason: str) -> None:
        RUNS.labels(run.model_name, "failed").inc()
        log.warning("run failed", extra={"run_id": run.id, "model": run.model_name, "reason": reason})
        await self.store.finish(run.id, FAILED, failure_reason=reason, stage="failed")
        self.notify(run.id)

    async def _run(self, run: Run, cancelled: threading.Event) -> int:
        spec = apply_params(self.catalog.get(run.model_name), run.params)
        await self._stage(run, "collecting labels", 0.01)
        labels = await self._labels(run, spec)
        await self._stage(run, f"building training set ({len(labels)} rows)", PROGRESS_FEATURES,
                          label_rows=len(labels))

        last_report = [time.monotonic()]

        async def fetched(rows: int) -> None:
            if time.monotonic() - last_report[0] > 0.5:
                last_report[0] = time.monotonic()
                share = PROGRESS_FEATURES + (PROGRESS_TRAINING - PROGRESS_FEATURES) * rows / len(labels)
                await self._stage(run, f"building training set ({rows}/{len(labels)} rows)", share)

        features = await self.features.historical(
            spec.features.feature_service, [entity_keys(spec, label) for label in labels],
            [label.event_time for label in labels], progress=fetched)
        absent = [f for f in spec.feature_names if f not in features.names]
        if absent:
            raise TrainingDataError(
                f"the feature service {spec.features.feature_service!r} does not provide {', '.join(absent)} "
                f"(it provides: {', '.join(features.names) or 'nothing'})")
        frame = training_frame(spec, labels, features.names, features.rows)
        await self._stage(run, "training", PROGRESS_TRAINING)

        outcome = await self._train_in_thread(run, spec, frame, cancelled)
        trained = outcome.trained
        await self._stage(
            run, "registering", PROGRESS_REGISTERING, metrics=finite(trained.metrics),
            epochs=[asdict(e) for e in trained.epochs], dataset_snapshot_id=outcome.snapshot_id,
            feature_names=spec.feature_names, train_rows=len(trained.splits.train),
            validation_rows=len(trained.splits.validation), test_rows=len(trained.splits.test))
        parent = await self.registry.version_of(spec.name, CHAMPION)
        version = await self._register(run, spec, outcome, parent)
        await self.store.finish(run.id, SUCCEEDED, registered_version=version.version, parent_version=parent,
                                stage="succeeded", progress=1.0)
        self.notify(run.id)
        return version.version

    async def _labels(self, run: Run, spec: ModelSpec) -> list[LabelRow]:
        """The window's usable labels. A run asked for by a retrain request (the monitor names a window
        that ends now) waits up to `label_wait_seconds` for them: the labels the monitor counted may
        still be on their way through this trainer's own feedback.received consumer."""
        deadline = time.monotonic() + (self.label_wait_seconds if run.retrain_request_id else 0.0)
        while True:
            try:
                return await self._labels_now(run, spec)
            except TrainingDataError as exc:
                if time.monotonic() >= deadline:
                    raise
                await self._stage(run, f"waiting for labels: {exc}", 0.01)
                await asyncio.sleep(self.poll_interval)

    async def _labels_now(self, run: Run, spec: ModelSpec) -> list[LabelRow]:
        source = spec.label.source_code
        labels = await self.store.labels_for(source, run.window_start, run.window_end)
        window = f"[{run.window_start.isoformat()}, {run.window_end.isoformat()})"
        if not labels:
            counts = await self.store.count_labels(source, run.window_start, run.window_end)
            detail = []
            if counts["late"]:
                detail.append(f"{counts['late']} more became known only after the window end and cannot be used")
            if counts["not_flags"]:
                detail.append(f"{counts['not_flags']} are not flag labels")
            raise TrainingDataError(f"no labelled rows: no {spec.label.source} flag labels with event time in "
                                    f"{window}" + (f" ({'; '.join(detail)})" if detail else ""))
        usable = [label for label in labels if all(label.entity_keys.get(k) for k in spec.entity_keys)]
        if not usable:
            raise TrainingDataError(f"none of the {len(labels)} labels in {window} carries the entity keys "
                                    f"{', '.join(spec.entity_keys)}")
        if len(usable) < spec.min_rows:
            raise TrainingDataError(f"only {len(usable)} labelled rows in {window}; the spec needs at least "
                                    f"min_rows = {spec.min_rows}")
        return usable

    async def _train_in_thread(self, run: Run, spec: ModelSpec, frame: pd.DataFrame,
                               cancelled: threading.Event) -> RunOutcome:
        """Train and package in a worker thread; its progress reports are written as they come."""
        loop = asyncio.get_running_loop()
        reports: asyncio.Queue[tuple[str, float, EpochMetrics | None] | None] = asyncio.Queue()

        def progress(stage: str, fraction: float, epoch: EpochMetrics | None) -> None:
            if cancelled.is_set():
                raise RunCancelled()
            overall = PROGRESS_TRAINING + (PROGRESS_PACKAGING - PROGRESS_TRAINING) * fraction
            loop.call_soon_threadsafe(reports.put_nowait, (stage, overall, epoch))

        async def write_reports() -> None:
            epochs: list[dict[str, float]] = []
            while True:
                batch = [await reports.get()]
                while not reports.empty():
                    batch.append(reports.get_nowait())
                done = batch[-1] is None
                items = [b for b in batch if b is not None]
                epochs += [asdict(e) for _, _, e in items if e is not None]
                if items:
                    stage, overall, _ = items[-1]
                    await self._stage(run, stage, overall, epochs=epochs)
                if done:
                    return

        writer = asyncio.create_task(write_reports())
        try:
            outcome = await asyncio.to_thread(self._train_and_package, run, spec, frame, progress)
        except asyncio.CancelledError:
            writer.cancel()
            raise
        except BaseException:
            reports.put_nowait(None)  # keep the epochs reported so far, then fail
            with contextlib.suppress(Exception):
                await writer
            raise
        # Reports sent before the thread returned are queued ahead of this point (call_soon order).
        reports.put_nowait(None)
        await writer
        return outcome

    def _train_and_package(self, run: Run, spec: ModelSpec, frame: pd.DataFrame,
                           progress: pipeline.Progress) -> RunOutcome:
        """CPU-bound work of a run (runs in a worker thread)."""
        columns = [*spec.entity_keys, EVENT_TIME, LABEL, *spec.feature_names]
        snapshot = pipeline.snapshot_id(frame, columns)
        trained = pipeline.train(frame, spec, progress=progress, threads=self.torch_threads)
        progress("packaging", 1.0, None)
        profile = reference_profile(trained.splits.train, spec.numeric, spec.categorical,
                                    sample_rows=self.profile_sample_rows, seed=spec.training.seed,
                                    score=trained.predict_proba)
        artifact = build_artifact(trained, spec, profile, run_id=run.id, extra={
            "window": {"start": run.window_start.isoformat(), "end": run.window_end.isoformat()},
            "dataset_snapshot_id": snapshot, "code_version": self.code_version,
            "label_source": spec.label.source, "feature_service": spec.features.feature_service,
            "params": run.params,
        })
        return RunOutcome(trained, snapshot, artifact)

    async def _register(self, run: Run, spec: ModelSpec, outcome: RunOutcome, parent: int) -> reg.ModelVersion:
        trained = outcome.trained
        metrics = finite({**trained.metrics, "threshold": trained.threshold, "temperature": trained.temperature,
                          "validation_roc_auc": trained.validation_metrics["roc_auc"],
                          "train_rows": float(len(trained.splits.train))})
        tags = {
            **registry_tags(run.params), RUN_TAG: run.id,
            "window": f"{run.window_start.isoformat()}/{run.window_end.isoformat()}",
            "label_source": spec.label.source, "feature_service": spec.features.feature_service,
            # Event time of the first row of the held-out test slice: data from here on was never
            # trained on, so an evaluator can compare versions on it without leakage.
            HOLDOUT_TAG: holdout_start(trained).isoformat(),
        }
        lineage = common_pb2.Lineage(
            parent_version=parent, training_run_id=run.id, dataset_snapshot_id=outcome.snapshot_id,
            feature_names=spec.feature_names, code_version=self.code_version,
            retrain_request_id=run.retrain_request_id, drift_event_id=run.drift_event_id)
        version_spec = reg.ModelVersionSpec(
            model_name=spec.name, kind=common_pb2.MODEL_KIND_PREDICTIVE, framework="pytorch",
            description=spec.description, tags=tags, metrics=metrics, lineage=lineage,
            expected_sha256=hashlib.sha256(outcome.artifact).hexdigest(), filename=f"{spec.name}.tar.gz")
        try:
            return await self.registry.register(version_spec, outcome.artifact)
        except Unavailable:
            # The answer may have been lost after the registry committed: look for this run's version.
            found = await self.registry.find_by_tag(spec.name, RUN_TAG, run.id)
            if found is None:
                raise
            return found
