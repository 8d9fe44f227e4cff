"""Executing one claimed run: the base model (resolved once, then fixed for the run) -> the dataset snapshot
(taken once, then fixed) -> the base directory -> LoRA training in a worker thread, resuming from the run's
newest checkpoint -> the adapter directory packed and registered as a version of the model. Every stage is
written to the run as it is reached.

A run cancelled by a stopping service is queued again (it resumes from its checkpoint at the next start);
`Finetuner.recover` queues again the runs a killed process left RUNNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.errors import FailedPrecondition, FlywheelError, Unavailable
from flywheel.common.model_dirs import pack_dir_file
from flywheel.common.tasks import within
from flywheel.finetuner import distillation, hyperparams
from flywheel.finetuner.dataset import EVAL, TRAIN
from flywheel.finetuner.distillation import ARTIFACT_SHA_TAG, RUN_TAG, Snapshot, eval_start_tag
from flywheel.finetuner.hyperparams import DISTILL, LoraSettings, StepReport, TrainingResult
from flywheel.finetuner.models import BaseModel, BaseModels
from flywheel.finetuner.runs import snapshot_of, split_examples
from flywheel.finetuner.store import FAILED, SUCCEEDED, FinetunerStore, Run
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg

log = logging.getLogger(__name__)

RUNS = Counter("flywheel_finetuner_runs_total", "Fine-tuning runs that ended.", ["application", "status"])
RUN_SECONDS = Histogram("flywheel_finetuner_run_seconds", "Wall time of one attempt of a run.", ["application"],
                        buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600))
RUNS_ACTIVE = Gauge("flywheel_finetuner_runs_active", "Runs executing in this process.")
STEPS = Counter("flywheel_finetuner_steps_total", "Optimizer steps taken.", ["application"])
RESUMES = Counter("flywheel_finetuner_resumes_total", "Run attempts that resumed from a checkpoint.")

# Overall progress: where each stage starts.
PROGRESS_DOWNLOAD = 0.03
PROGRESS_TRAINING = 0.08
PROGRESS_PACKAGING = 0.92
PROGRESS_REGISTERING = 0.95


class RunCancelled(Exception):
    """Raised inside the training thread when the run is being interrupted."""


class RunExecutor:
    """Executes claimed runs; `notify` tells a run's watchers it changed, `after` is called when a run ended
    (the correction threshold may call for the next one)."""

    def __init__(self, store: FinetunerStore, models: BaseModels, registry: ModelRegistry, *, defaults: LoraSettings,
                 work_dir: Path, code_version: str, notify: Callable[[str], None],
                 after: Callable[[str], Awaitable[None]], torch_threads: int = 1, min_train_examples: int = 1) -> None:
        self.store = store
        self.models = models
        self.registry = registry
        self.defaults = defaults
        self.work_dir = work_dir
        self.code_version = code_version
        self.notify = notify
        self.after = after
        self.torch_threads = torch_threads
        self.min_train_examples = min_train_examples
        # Only one training at a time in this process (torch's threads are process-wide).
        self._training = asyncio.Lock()

    def run_dir(self, run_id: str) -> Path:
        return self.work_dir / "runs" / run_id

    async def execute(self, run: Run) -> None:
        """Take a claimed run to SUCCEEDED or FAILED; cancelling the task (the service stops) queues it again
        and stops its training thread at the next step."""
        cancelled = threading.Event()
        started = time.monotonic()
        RUNS_ACTIVE.inc()
        log.info("fine-tuning run started", extra={"run_id": run.id, "application": run.application,
                                                   "attempt": run.attempts})
        ended = True
        try:
            version = await self._run(run, cancelled)
        except asyncio.CancelledError:
            cancelled.set()
            ended = False
            await self._requeue(run)
            raise
        except FlywheelError as exc:
            await self._fail(run, str(exc))
        except Exception as exc:
            log.exception("fine-tuning run failed unexpectedly", extra={"run_id": run.id})
            await self._fail(run, f"internal error: {type(exc).__name__}: {exc}")
        else:
            RUNS.labels(run.application, "succeeded").inc()
            log.info("fine-tuning run succeeded", extra={"run_id": run.id, "application": run.application,
                                                         "model": run.model_name, "version": version})
        finally:
            RUNS_ACTIVE.dec()
            RUN_SECONDS.labels(run.application).observe(time.monotonic() - started)
        if ended:
            with contextlib.suppress(Exception):
                shutil.rmtree(self.run_dir(run.id), ignore_errors=True)
            try:
                await self.after(run.application)
            except Exception:
                log.exception("checking the correction threshold after a run failed", extra={"run_id": run.id})

    async def _stage(self, run: Run, stage: str, progress: float, **values: Any) -> None:
        run.stage, run.progress = stage, progress
        await self.store.update(run.id, stage=stage, progress=progress, **values)
        self.notify(run.id)

    async def _fail(self, run: Run, reason: str) -> None:
        RUNS.labels(run.application, "failed").inc()
        log.warning("fine-tuning run failed", extra={"run_id": run.id, "application": run.application,
                                                     "reason": reason})
        await self.store.finish(run.id, FAILED, failure_reason=reason, stage="failed")
        self.notify(run.id)

    async def _requeue(self, run: Run) -> None:
        current = await self.store.get(run.id)
        stage = (f"interrupted at step {current.step}: resumes from checkpoint step {current.checkpoint_step}"
                 if current.checkpoint_step else "interrupted: starts again")
        await self.store.requeue(run.id, stage)
        self.notify(run.id)
        log.warning("fine-tuning run interrupted, queued again", extra={"run_id": run.id, "stage": stage})

    # -- the stages --------------------------------------------------------------------------------

    async def _run(self, run: Run, cancelled: threading.Event) -> int:
        settings = self.defaults.with_overrides(run.settings)
        distill = settings.mode == DISTILL
        what = "student" if distill else "adapter"
        await self._stage(run, "resolving the base model", 0.0)
        base = await self._base(run)
        snapshot = await self._snapshot(run, settings, base)
        train, evaluation = snapshot.examples(TRAIN), snapshot.examples(EVAL)
        if len(train) < self.min_train_examples:
            raise FailedPrecondition(f"only {len(train)} training examples in snapshot {snapshot.id[:12]} "
                                     f"({len(evaluation)} held out for eval); min_train_examples is "
                                     f"{self.min_train_examples}")
        found = await self._registered(run, base)
        if found is not None:  # registered by an attempt that was killed before it could record it
            await self.store.finish(run.id, SUCCEEDED, registered_version=found.version, progress=1.0,
                                    stage=f"succeeded ({what} registered by an earlier attempt)")
            self.notify(run.id)
            return found.version
        teacher = await self._teacher(run, base) if distill else None
        await self._stage(run, f"downloading the base model {base.ref}", PROGRESS_DOWNLOAD)
        started = time.monotonic()
        directory = await self.models.directory(base.base)  # once per base version: then from the cache
        adapter = None
        if teacher is not None and teacher.kind == common_pb2.MODEL_KIND_LORA_ADAPTER:  # merged into the teacher
            adapter = await self.models.directory(teacher)
        fetched = time.monotonic() - started
        await self._stage(run, "training" if not distill else "distilling the student", PROGRESS_TRAINING)
        async with self._training:
            result = await self._train_in_thread(run, base, snapshot, settings, directory, cancelled, teacher,
                                                 adapter)
        metrics = {**result.metrics(), "reviews": float(snapshot.reviews), "corrections": float(snapshot.corrections),
                   "approvals": float(len(snapshot.splits) - snapshot.corrections), "base_fetch_seconds": fetched}
        if distill:
            metrics["teacher_answers"] = float(snapshot.teacher_answers)
        await self._stage(run, f"packaging the {what}", PROGRESS_PACKAGING, metrics=metrics, epochs=result.epochs,
                          step=result.steps)
        started = time.monotonic()
        tar = self.run_dir(run.id) / f"{what}.tar"
        sha = await asyncio.to_thread(pack_dir_file, result.adapter_dir, tar)
        await self._stage(run, f"registering the {what}", PROGRESS_REGISTERING)
        if teacher is not None:
            spec = distillation.student_spec(run, base, teacher, snapshot, metrics, sha, self.code_version)
        else:
            spec = self._adapter_spec(run, base, snapshot, metrics, sha)
        version = await self._register(run, base, spec, tar)
        await self.store.finish(run.id, SUCCEEDED, registered_version=version.version, stage="succeeded",
                                progress=1.0, metrics={**metrics, "register_seconds": time.monotonic() - started})
        self.notify(run.id)
        return version.version

    async def _teacher(self, run: Run, base: BaseModel) -> reg.ModelVersion:
        """The version a distillation run learns from: the model's champion when the run started."""
        found = await self.registry.get_version(base.model_name, base.parent_version)
        if found is None:
            raise FailedPrecondition(f"the teacher {base.model_name} v{base.parent_version} is gone from the registry")
        return found

    async def _base(self, run: Run) -> BaseModel:
        """The run's base model: resolved on its first attempt and recorded, the same on every later one."""
        if run.base_version:
            found = await self.registry.get_version(run.base_name, run.base_version)
            if found is None:
                raise FailedPrecondition(f"base model {run.base_name} v{run.base_version} is gone from the registry")
            return BaseModel(run.model_name, run.parent_version, found)
        base = await self.models.resolve(run.application)
        run.model_name, run.base_name, run.base_version = base.model_name, base.base.model_name, base.base.version
        run.parent_version = base.parent_version
        await self.store.update(run.id, model_name=run.model_name, base_name=run.base_name,
                                base_version=run.base_version, parent_version=run.parent_version)
        return base

    async def _snapshot(self, run: Run, settings: LoraSettings, base: BaseModel) -> Snapshot:
        """The run's data: taken on its first attempt (every example created until now, split by time; for a
        distillation run the teacher's answers too) and recorded under its content hash; read back on later
        attempts."""
        distill = settings.mode == DISTILL
        if run.dataset_snapshot_id:
            if distill:
                return await distillation.read_distill_snapshot(self.store, run.dataset_snapshot_id)
            _, examples = await self.store.snapshot(run.dataset_snapshot_id)
            return Snapshot(run.dataset_snapshot_id, [(e, e.split) for e in examples])
        await self._stage(run, "taking the dataset snapshot", 0.01)
        cutoff = await self.store.now()
        if distill:
            snapshot = await distillation.take_distill_snapshot(self.store, run, settings, base, cutoff)
        else:
            examples = await self.store.examples(run.application, cutoff)
            if not examples:
                raise FailedPrecondition(f"application {run.application!r} has no examples: its dataset is built "
                                         "from reviewers' corrections and approvals (reviews.completed)")
            splits = split_examples(examples, settings.eval_fraction)
            snapshot = Snapshot(snapshot_of(run.application, splits), splits)
            await self.store.save_snapshot(snapshot.id, run.application, splits)
        run.dataset_snapshot_id = snapshot.id
        await self.store.update(run.id, dataset_snapshot_id=snapshot.id, data_cutoff=cutoff, reviews=snapshot.reviews,
                                **snapshot.counts())
        log.info("dataset snapshot taken", extra={"run_id": run.id, "application": run.application,
                                                  "snapshot": snapshot.id, **snapshot.counts(),
                                                  "teacher_answers": snapshot.teacher_answers})
        return snapshot

    async def _registered(self, run: Run, base: BaseModel) -> reg.ModelVersion | None:
        with contextlib.suppress(Unavailable, TimeoutError):
            return await within(self.registry.find_by_tag(base.model_name, RUN_TAG, run.id), 10.0)
        return None

    async def _train_in_thread(self, run: Run, base: BaseModel, snapshot: Snapshot, settings: LoraSettings,
                               directory: Path, cancelled: threading.Event, teacher: reg.ModelVersion | None = None,
                               adapter: Path | None = None) -> TrainingResult:
        """Train in a worker thread; its step reports are written to the run as fast as the database takes
        them (the newest wins), checkpoints and epoch ends always."""
        loop = asyncio.get_running_loop()
        reports: asyncio.Queue[StepReport | None] = asyncio.Queue()
        fingerprint = hashlib.sha256(json.dumps(
            {"run": run.id, "snapshot": snapshot.id, "base": base.ref, "settings": settings.to_strings()},
            sort_keys=True).encode()).hexdigest()

        def progress(report: StepReport) -> None:
            if cancelled.is_set():
                raise RunCancelled()
            loop.call_soon_threadsafe(reports.put_nowait, report)

        async def write_reports() -> None:
            epochs = list(run.epochs) if run.epochs else []
            checkpoint = run.checkpoint_step
            while True:
                batch = [await reports.get()]
                while not reports.empty():
                    batch.append(reports.get_nowait())
                items = [b for b in batch if b is not None]
                for item in items:
                    if item.epoch_metrics is not None:
                        epochs = [e for e in epochs if e["epoch"] < item.epoch_metrics["epoch"]] + [item.epoch_metrics]
                        log.info("fine-tuning epoch done", extra={"run_id": run.id, **item.epoch_metrics})
                    if item.checkpoint_step:
                        checkpoint = item.checkpoint_step
                        log.info("checkpoint saved", extra={"run_id": run.id, "step": item.checkpoint_step,
                                                            "total_steps": item.total_steps})
                if items:
                    last = items[-1]
                    STEPS.labels(run.application).inc(len(items))
                    share = last.step / max(last.total_steps, 1)
                    stage = f"epoch {last.epoch}/{last.epochs}, step {last.step}/{last.total_steps}, " \
                            f"loss {last.train_loss:.4f}"
                    await self._stage(run, stage, PROGRESS_TRAINING + (PROGRESS_PACKAGING - PROGRESS_TRAINING) * share,
                                      step=last.step, total_steps=last.total_steps, checkpoint_step=checkpoint,
                                      epochs=epochs)
                if batch[-1] is None:
                    return

        info = {"run_id": run.id, "application": run.application, "dataset_snapshot_id": snapshot.id}
        checkpoints = self.run_dir(run.id) / "checkpoints"
        found = hyperparams.latest_checkpoint(checkpoints, fingerprint)
        step = json.loads((found / hyperparams.STATE_FILE).read_text())["step"] if found is not None else 0
        await self.store.update(run.id, resumed_from_step=step)
        if step:
            RESUMES.inc()
            log.info("resuming from checkpoint", extra={"run_id": run.id, "step": step})
        # torch, transformers, PEFT: imported on the first run only
        if teacher is not None:
            from flywheel.finetuner.student import distill_student

            train = functools.partial(distill_student, adapter_dir=adapter,
                                      teacher_ref=f"{teacher.model_name}@v{teacher.version}")
            out_dir = self.run_dir(run.id) / "student"
        else:
            from flywheel.finetuner.lora import train_lora

            train = functools.partial(train_lora, base_ref=base.ref)
            out_dir = self.run_dir(run.id) / "adapter"
        writer = asyncio.create_task(write_reports())
        training = asyncio.ensure_future(asyncio.to_thread(
            train, directory, snapshot.examples(TRAIN), snapshot.examples(EVAL), settings,
            checkpoints=checkpoints, out_dir=out_dir, fingerprint=fingerprint, progress=progress,
            threads=self.torch_threads, info=info))
        try:
            result = await asyncio.shield(training)
        except asyncio.CancelledError:
            # Let the thread stop at its next step (after the checkpoint it may be writing) before the run can be
            # claimed again: two attempts of one run must never train, or touch its checkpoints, at once.
            cancelled.set()
            writer.cancel()
            with contextlib.suppress(BaseException):
                await training
            raise
        except BaseException:
            reports.put_nowait(None)
            with contextlib.suppress(Exception):
                await writer
            raise
        reports.put_nowait(None)
        await writer
        await self.store.update(run.id, resumed_from_step=result.resumed_from_step)
        return result

    def _adapter_spec(self, run: Run, base: BaseModel, snapshot: Snapshot, metrics: dict[str, float],
                      sha: str) -> reg.ModelVersionSpec:
        tags = {
            RUN_TAG: run.id, "application": run.application, "dataset_snapshot_id": snapshot.id,
            "base": base.ref, "reviews": str(snapshot.reviews), ARTIFACT_SHA_TAG: sha, "format": "peft-lora-dir-tar",
            "settings": json.dumps(run.settings, sort_keys=True), **eval_start_tag(snapshot),
        }
        lineage = common_pb2.Lineage(
            parent_version=base.parent_version, training_run_id=run.id, dataset_snapshot_id=snapshot.id,
            code_version=self.code_version, retrain_request_id=run.retrain_request_id,
            drift_event_id=run.drift_event_id,
            base_model=common_pb2.ModelRef(name=base.base.model_name, version=base.base.version))
        return reg.ModelVersionSpec(
            model_name=base.model_name, kind=common_pb2.MODEL_KIND_LORA_ADAPTER, framework="peft",
            description=f"LoRA adapter of {base.ref} fine-tuned on {snapshot.reviews} reviews of {run.application} "
                        f"(run {run.id})",
            tags=tags, metrics=metrics, lineage=lineage, expected_sha256=sha,
            filename=f"{base.model_name}-lora-{run.id[:12]}.tar")

    async def _register(self, run: Run, base: BaseModel, spec: reg.ModelVersionSpec, tar: Path) -> reg.ModelVersion:
        try:
            return await self.registry.register(spec, tar)
        except Unavailable:
            # The answer may have been lost after the registry committed: look for this run's version.
            found = await self.registry.find_by_tag(base.model_name, RUN_TAG, run.id)
            if found is None:
                raise
            return found
