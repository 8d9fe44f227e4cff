"""The trainer's use cases, free of any transport: gRPC, the CLI and the event handlers all come
through this facade.

A run is (model spec, training window [start, end), label source). Runs are asked for and read in
`runs.py` (queued in the database, at most one queued or running per model; later requests join
it); a scheduler claims them and `execution.py` executes each one. After a crash, `recover` settles
the runs that were left running.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime

from psycopg import AsyncConnection

from flywheel.common.clients.ports import FeatureSource, ModelRegistry
from flywheel.common.db import Database
from flywheel.common.errors import FlywheelError
from flywheel.common.jobs import JobScheduler
from flywheel.common.tasks import within
from flywheel.predictive.spec import SpecCatalog
from flywheel.proto.events.v1 import models_pb2, predictions_pb2
from flywheel.trainer.execution import RUN_TAG, RUNS, RunExecutor
from flywheel.trainer.runs import RunRequest, Runs
from flywheel.trainer.store import FAILED, RUN_QUEUE, SUCCEEDED, Run, TrainerStore

log = logging.getLogger(__name__)

SOURCE = "flywheel/trainer"


class Trainer:
    """Runs: asked for, read and watched (`Runs`), scheduled, executed (`RunExecutor`) and recovered."""

    def __init__(self, db: Database, catalog: SpecCatalog, features: FeatureSource, registry: ModelRegistry, *,
                 code_version: str, torch_threads: int = 1, max_concurrent_runs: int = 1,
                 profile_sample_rows: int = 2000, poll_interval: float = 1.0,
                 label_wait_seconds: float = 0.0) -> None:
        self.store = TrainerStore(db)
        self.registry = registry
        self.runs = Runs(db, self.store, catalog, code_version=code_version, wake=self.wake)
        self.executor = RunExecutor(
            self.store, catalog, features, registry, code_version=code_version, notify=self.runs.notify,
            torch_threads=torch_threads, profile_sample_rows=profile_sample_rows, poll_interval=poll_interval,
            label_wait_seconds=label_wait_seconds)
        self.scheduler: JobScheduler[Run] = JobScheduler(
            "trainer-runs", claim=self.store.claim_next, execute=self.executor.execute, key=lambda run: run.id,
            max_concurrent=max_concurrent_runs, poll_interval=poll_interval, listen_url=db.url,
            channel=RUN_QUEUE.channel(db.schema), on_done=self.runs.notify)

    # -- runs ----------------------------------------------------------------------------------

    async def start_run(self, request: RunRequest) -> tuple[Run, bool]:
        """Queue a run, or return the model's queued/running one (coalesced = True)."""
        return await self.runs.start_run(request)

    async def request_retrain(self, conn: AsyncConnection, event_id: str, request: models_pb2.RetrainRequested,
                              source: str = "") -> tuple[Run, bool] | None:
        """Apply a retrain.requests event inside the consumer's transaction (see `Runs.request_retrain`)."""
        return await self.runs.request_retrain(conn, event_id, request, source)

    async def add_labels(self, conn: AsyncConnection, feedback: list[tuple[predictions_pb2.FeedbackReceived, datetime]],
                         ) -> int:
        return await self.runs.add_labels(conn, feedback)

    async def get_run(self, run_id: str) -> Run:
        return await self.runs.get_run(run_id)

    async def list_runs(self, model_name: str, page_size: int, page_token: str) -> tuple[list[Run], str]:
        return await self.runs.list_runs(model_name, page_size, page_token)

    def watch_run(self, run_id: str, poll: float = 1.0) -> AsyncIterator[Run]:
        """The run now, then every change of status, stage or progress, until it has ended."""
        return self.runs.watch_run(run_id, poll)

    # -- the scheduler -------------------------------------------------------------------------

    def wake(self) -> None:
        self.scheduler.wake()

    async def start(self) -> None:
        await self.recover()
        self.scheduler.start()

    async def stop(self) -> None:
        """Cancel every run in progress (each is marked failed) and the scheduler."""
        await self.scheduler.stop()

    async def recover(self) -> None:
        """Runs left RUNNING by a crash: SUCCEEDED if their version made it into the registry, else FAILED."""
        for run in await self.store.running():
            found = None
            with contextlib.suppress(FlywheelError, TimeoutError):
                found = await within(self.registry.find_by_tag(run.model_name, RUN_TAG, run.id), 5.0)
            if found is not None:
                await self.store.finish(run.id, SUCCEEDED, registered_version=found.version, progress=1.0,
                                        stage="succeeded (registration confirmed after a restart)")
                log.warning("run recovered after a restart", extra={"run_id": run.id, "version": found.version})
            else:
                await self.store.finish(run.id, FAILED, failure_reason="interrupted by a restart", stage="failed")
                RUNS.labels(run.model_name, "failed").inc()
                log.warning("run interrupted by a restart marked failed", extra={"run_id": run.id})
