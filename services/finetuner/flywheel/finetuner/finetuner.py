"""The fine-tuner's use cases, free of any transport: gRPC, the CLI and the event handlers all come through
this facade.

Datasets are built by `intake.py` (reviews.requested + reviews.completed -> examples; the correction
threshold). Runs are asked for and read in `runs.py` (queued in the database, at most one queued or running
per application; later requests join it); a scheduler claims them and `execution.py` executes each one.
At start-up, `recover` deals with the runs a killed process left RUNNING.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from psycopg import AsyncConnection

from flywheel.common.clients.ports import ModelRegistry
from flywheel.common.db import Database
from flywheel.common.errors import FlywheelError
from flywheel.common.jobs import JobScheduler
from flywheel.common.tasks import within
from flywheel.finetuner.execution import RUN_TAG, RUNS, RunExecutor
from flywheel.finetuner.hyperparams import LoraSettings
from flywheel.finetuner.intake import SOURCE, Intake
from flywheel.finetuner.models import BaseModels
from flywheel.finetuner.runs import DatasetView, RunRequest, Runs
from flywheel.finetuner.store import FAILED, RUN_QUEUE, SUCCEEDED, FinetunerStore, Run
from flywheel.proto.events.v1 import models_pb2, predictions_pb2, reviews_pb2

log = logging.getLogger(__name__)

__all__ = ["SOURCE", "Finetuner"]


class Finetuner:
    """Datasets (`Intake`), runs asked for and read (`Runs`), scheduled, executed (`RunExecutor`), recovered."""

    def __init__(self, db: Database, registry: ModelRegistry, *, work_dir: Path, defaults: LoraSettings,
                 applications: dict[str, str] | None = None, correction_threshold: int = 0, code_version: str = "",
                 torch_threads: int = 1, min_train_examples: int = 1, max_attempts: int = 3,
                 max_concurrent_runs: int = 1, poll_interval: float = 1.0, retention_days: float = 30.0,
                 teacher_answers: int = 0) -> None:
        self.db = db
        self.store = FinetunerStore(db)
        self.registry = registry
        self.max_attempts = max_attempts
        self.retention = timedelta(days=retention_days)
        self.models = BaseModels(registry, work_dir / "models", applications or {}, self.store.latest_model)
        self.intake = Intake(self.store, threshold=correction_threshold, defaults=defaults, code_version=code_version,
                             wake=self.wake, teacher_answers=teacher_answers)
        self.runs = Runs(db, self.store, self.models, defaults=defaults, threshold=correction_threshold,
                         code_version=code_version, wake=self.wake)
        self.executor = RunExecutor(self.store, self.models, registry, defaults=defaults, work_dir=work_dir,
                                    code_version=code_version, notify=self.runs.notify, after=self.after_run,
                                    torch_threads=torch_threads, min_train_examples=min_train_examples)
        self.scheduler: JobScheduler[Run] = JobScheduler(
            "finetuner-runs", claim=self.store.claim_next, execute=self.executor.execute, key=lambda run: run.id,
            max_concurrent=max_concurrent_runs, poll_interval=poll_interval, listen_url=db.url,
            channel=RUN_QUEUE.channel(db.schema), on_done=self.runs.notify)

    # -- datasets ------------------------------------------------------------------------------

    # New data may let retrain requests that were waiting for it start their run (same transaction).

    async def add_review_requests(self, conn: AsyncConnection, requests: list[reviews_pb2.ReviewRequested]) -> int:
        new = await self.intake.add_requested(conn, requests)
        if new:
            await self.runs.start_waiting(conn)
        return new

    async def add_review_decisions(self, conn: AsyncConnection,
                                   completed: list[tuple[reviews_pb2.ReviewCompleted, datetime]]) -> int:
        new = await self.intake.add_completed(conn, completed)
        if new:
            await self.runs.start_waiting(conn)
        return new

    async def add_logged(self, conn: AsyncConnection,
                         logged: list[tuple[predictions_pb2.PredictionLogged, datetime]]) -> int:
        new = await self.intake.add_logged(conn, logged)
        if new:
            await self.runs.start_waiting(conn)
        return new

    async def describe_dataset(self, application: str, snapshot_id: str = "") -> DatasetView:
        return await self.runs.describe_dataset(application, snapshot_id)

    async def after_run(self, application: str) -> None:
        """A run ended: corrections that arrived meanwhile may already reach the threshold."""
        async with self.db.connection() as conn, conn.transaction():
            await self.intake.maybe_trigger(conn, application)

    # -- runs ----------------------------------------------------------------------------------

    async def start_run(self, request: RunRequest) -> tuple[Run, bool]:
        """Queue a run, or return the application's queued/running one (coalesced = True)."""
        return await self.runs.start_run(request)

    async def request_retrain(self, conn: AsyncConnection, event_id: str, request: models_pb2.RetrainRequested,
                              source: str = "") -> tuple[Run, bool] | None:
        return await self.runs.request_retrain(conn, event_id, request, source)

    async def get_run(self, run_id: str) -> Run:
        return await self.runs.get_run(run_id)

    async def list_runs(self, application: str, page_size: int, page_token: str) -> tuple[list[Run], str]:
        return await self.runs.list_runs(application, page_size, page_token)

    def watch_run(self, run_id: str, poll: float = 1.0) -> AsyncIterator[Run]:
        return self.runs.watch_run(run_id, poll)

    # -- the scheduler -------------------------------------------------------------------------

    def wake(self) -> None:
        self.scheduler.wake()

    async def start(self) -> None:
        await self.recover()
        with contextlib.suppress(Exception):
            pruned = await self.store.prune(datetime.now(UTC) - self.retention)
            if pruned:
                log.info("forgot undecided review items and unmatched decisions", extra={"rows": pruned})
        self.scheduler.start()

    async def stop(self) -> None:
        """Stop the scheduler; runs in progress are queued again and resume from their checkpoints."""
        await self.scheduler.stop()

    async def recover(self) -> None:
        """Runs a killed process left RUNNING: SUCCEEDED if their adapter made it into the registry, FAILED
        after `max_attempts` starts, else queued again (they resume from their newest checkpoint)."""
        for run in await self.store.running():
            found = None
            if run.model_name:
                with contextlib.suppress(FlywheelError, TimeoutError):
                    found = await within(self.registry.find_by_tag(run.model_name, RUN_TAG, run.id), 5.0)
            if found is not None:
                await self.store.finish(run.id, SUCCEEDED, registered_version=found.version, progress=1.0,
                                        stage="succeeded (registration confirmed after a restart)")
                log.warning("run recovered after a restart", extra={"run_id": run.id, "version": found.version})
            elif run.attempts >= self.max_attempts:
                await self.store.finish(run.id, FAILED, stage="failed", failure_reason=(
                    f"interrupted by a restart {run.attempts} times (max_attempts = {self.max_attempts})"))
                RUNS.labels(run.application, "failed").inc()
                log.warning("run interrupted too often, marked failed", extra={"run_id": run.id})
            else:
                stage = (f"interrupted by a restart at step {run.step}: resumes from checkpoint step "
                         f"{run.checkpoint_step}" if run.checkpoint_step else "interrupted by a restart: starts again")
                await self.store.requeue(run.id, stage)
                log.warning("run interrupted by a restart, queued again", extra={
                    "run_id": run.id, "checkpoint_step": run.checkpoint_step})
