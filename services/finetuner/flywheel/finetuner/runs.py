"""Asking for runs and reading them: StartRun and retrain.requests (one queued or running run per
application; later requests join it), reading and watching runs, and describing datasets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from prometheus_client import Counter
from psycopg import AsyncConnection

from flywheel.common.db import Database
from flywheel.common.errors import FailedPrecondition, InvalidArgument, NotFound, PoisonEvent
from flywheel.common.tasks import within
from flywheel.finetuner import dataset
from flywheel.finetuner.hyperparams import DISTILL, LoraSettings
from flywheel.finetuner.models import BaseModel, BaseModels
from flywheel.finetuner.store import DatasetStats, FinetunerStore, Run, StoredExample
from flywheel.proto.events.v1 import common_pb2, models_pb2

log = logging.getLogger(__name__)

RETRAIN_REQUESTS = Counter("flywheel_finetuner_retrain_requests_total", "retrain.requests by outcome.", ["outcome"])
LLM_KINDS = (common_pb2.MODEL_KIND_LLM, common_pb2.MODEL_KIND_LORA_ADAPTER)


@dataclass(frozen=True)
class RunRequest:
    """What a caller asks for: fine-tune `application` (an application or a model name)."""

    application: str
    settings: dict[str, str] = field(default_factory=dict)
    reason: int = models_pb2.RETRAIN_REASON_MANUAL
    retrain_request_id: str = ""
    drift_event_id: str = ""
    parent_version: int = 0
    requested_by: str = ""


@dataclass
class DatasetView:
    """GetDataset's answer: the application's dataset now (or one snapshot)."""

    stats: DatasetStats
    snapshot_id: str
    train_examples: int
    eval_examples: int
    new_corrections: int
    threshold: int
    pending_decisions: int
    reviews: int
    last_run: Run | None = None
    review_ids: list[str] = field(default_factory=list)


class NoDataYet(FailedPrecondition):
    """The application has nothing to learn from yet: no reviewed examples (LoRA), or no logged answers of its
    champion (distillation). A retrain request in that state waits for the data instead of being rejected."""


def split_examples(examples: list[StoredExample], eval_fraction: float) -> list[tuple[StoredExample, str]]:
    """The examples (oldest decision first) with their split."""
    splits = dataset.split_by_time([e.id for e in examples], eval_fraction)
    return [(e, splits[e.id]) for e in examples]


def snapshot_of(application: str, splits: list[tuple[StoredExample, str]]) -> str:
    return dataset.snapshot_id(application, [(e.key, s) for e, s in splits])


class Runs:
    """The runs asked for; `wake` tells the scheduler a run was queued."""

    def __init__(self, db: Database, store: FinetunerStore, models: BaseModels, *, defaults: LoraSettings,
                 threshold: int, code_version: str, wake: Callable[[], None]) -> None:
        self.db = db
        self.store = store
        self.models = models
        self.defaults = defaults
        self.threshold = threshold
        self.code_version = code_version
        self.wake = wake
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)

    # -- asking for runs -----------------------------------------------------------------------

    def settings_for(self, overrides: dict[str, str]) -> LoraSettings:
        return self.defaults.with_overrides(overrides)

    def _new_run(self, request: RunRequest, settings: LoraSettings) -> Run:
        return Run(id=uuid.uuid4().hex, application=request.application, status=0, settings=settings.to_strings(),
                   reason=request.reason, retrain_request_id=request.retrain_request_id,
                   drift_event_id=request.drift_event_id, parent_version=request.parent_version,
                   requested_by=request.requested_by, code_version=self.code_version)

    async def check(self, request: RunRequest, conn: AsyncConnection | None = None) -> LoraSettings:
        """What can be checked before queueing: the name, the settings, that the application resolves to an
        LLM in the registry and has data (NoDataYet). InvalidArgument / NotFound / FailedPrecondition otherwise.
        `conn`: see the data as that transaction does."""
        if not request.application.strip():
            raise InvalidArgument("application is empty: name an LLM application or a base model")
        settings = self.settings_for(request.settings)
        base = await self.models.resolve(request.application)
        if settings.mode == DISTILL:
            await self.check_teacher_answers(request.application, base, conn)
            return settings
        if not await self.store.has_examples(request.application, conn):
            raise NoDataYet(
                f"application {request.application!r} has no examples yet: its dataset is built from reviewers' "
                "corrections and approvals of its answers (reviews.completed)")
        return settings

    async def check_teacher_answers(self, application: str, base: BaseModel,
                                    conn: AsyncConnection | None = None) -> None:
        """A distillation run needs answers of the champion (the teacher) logged for the application."""
        counts = await self.store.teacher_answer_counts(application, conn)
        if counts.get((base.model_name, base.parent_version)):
            return
        kept = ", ".join(f"{name} v{version}: {n}" for (name, version), n in sorted(counts.items())) or "none"
        raise NoDataYet(
            f"application {application!r} has no logged answers of its champion {base.model_name} "
            f"v{base.parent_version} (the teacher) yet: distillation learns from the champion's answers on "
            f"predictions.logged (arm champion, finished with stop; kept answers by version: {kept})")

    async def start_run(self, request: RunRequest) -> tuple[Run, bool]:
        """Queue a run, or return the application's queued/running one (coalesced = True)."""
        settings = await self.check(request)
        async with self.db.connection() as conn, conn.transaction():
            run, coalesced = await self.store.create_or_join(conn, self._new_run(request, settings))
        self.wake()
        log.info("fine-tuning run requested", extra={"run_id": run.id, "application": run.application,
                                                     "coalesced": coalesced, "requested_by": request.requested_by})
        return run, coalesced

    async def request_retrain(self, conn: AsyncConnection, event_id: str, request: models_pb2.RetrainRequested,
                              source: str = "") -> tuple[Run, bool] | None:
        """Apply a retrain.requests event inside the consumer's transaction. Requests for predictive models
        are the trainer's (ignored); a request seen before does nothing; one for an application with nothing to
        learn from yet waits for its data (`start_waiting`); one that cannot start a run (unknown application, bad
        parameters) is a poison event (dead-lettered with the reason)."""
        if request.kind not in LLM_KINDS:
            RETRAIN_REQUESTS.labels("other_kind").inc()
            return None
        run_request = RunRequest(
            application=request.model_name, settings=dict(request.parameters),
            reason=request.reason or models_pb2.RETRAIN_REASON_UNSPECIFIED,
            retrain_request_id=request.request_id or event_id, drift_event_id=request.drift_event_id,
            parent_version=request.parent.version, requested_by=source)
        if not await self.store.is_new_request(conn, run_request.retrain_request_id):
            RETRAIN_REQUESTS.labels("duplicate").inc()
            return None
        try:
            settings = await self.check(run_request)
        except NoDataYet as exc:
            await self.store.add_waiting(conn, run_request.retrain_request_id, run_request.application,
                                         run_request.settings, run_request.reason, run_request.drift_event_id,
                                         run_request.parent_version, run_request.requested_by)
            RETRAIN_REQUESTS.labels("waiting").inc()
            log.warning("retrain request waits for data", extra={
                "request_id": run_request.retrain_request_id, "application": run_request.application,
                "reason": str(exc)})
            return None
        except (InvalidArgument, NotFound, FailedPrecondition) as exc:
            RETRAIN_REQUESTS.labels("rejected").inc()
            raise PoisonEvent(f"retrain request {run_request.retrain_request_id} cannot start a fine-tuning run: "
                              f"{exc}") from exc
        run, coalesced = await self.store.create_or_join(conn, self._new_run(run_request, settings))
        await self.store.link_request(conn, run_request.retrain_request_id, run.application, run.id, coalesced)
        RETRAIN_REQUESTS.labels("coalesced" if coalesced else "started").inc()
        log.info("retrain requested", extra={"request_id": run_request.retrain_request_id, "run_id": run.id,
                                             "application": run.application, "coalesced": coalesced})
        self.wake()
        return run, coalesced

    async def start_waiting(self, conn: AsyncConnection) -> list[Run]:
        """Inside a consumer's transaction that added data: start (or join) a run for each application whose
        waiting retrain requests now have something to learn from; the oldest request's settings and ids make
        the run, every waiting one is linked to it. Requests that can no longer start a run (their application's
        model gone, say) are dropped with a warning."""
        by_application: dict[str, list[dict]] = defaultdict(list)
        for row in await self.store.waiting(conn):
            by_application[row["application"]].append(row)
        started = []
        for application, rows in by_application.items():
            first = rows[0]
            request = RunRequest(application=application, settings=dict(first["settings"]), reason=first["reason"],
                                 retrain_request_id=first["request_id"], drift_event_id=first["drift_event_id"],
                                 parent_version=first["parent_version"], requested_by=first["requested_by"])
            ids = [r["request_id"] for r in rows]
            try:
                settings = await self.check(request, conn)
            except NoDataYet:
                continue
            except (InvalidArgument, NotFound, FailedPrecondition) as exc:
                RETRAIN_REQUESTS.labels("dropped").inc(len(ids))
                log.warning("waiting retrain requests dropped", extra={"application": application, "request_ids": ids,
                                                                       "reason": str(exc)})
                await self.store.drop_waiting(conn, ids)
                continue
            run, coalesced = await self.store.create_or_join(conn, self._new_run(request, settings))
            await self.store.drop_waiting(conn, ids)
            for i, request_id in enumerate(ids):
                await self.store.link_request(conn, request_id, application, run.id, coalesced or i > 0)
            RETRAIN_REQUESTS.labels("started_after_waiting").inc()
            log.info("waiting retrain requests started a run", extra={
                "application": application, "request_ids": ids, "run_id": run.id, "coalesced": coalesced})
            started.append(run)
        if started:
            self.wake()
        return started

    # -- reading runs and datasets ------------------------------------------------------------

    async def get_run(self, run_id: str) -> Run:
        if not run_id:
            raise InvalidArgument("run_id is empty")
        return await self.store.get(run_id)

    async def list_runs(self, application: str, page_size: int, page_token: str) -> tuple[list[Run], str]:
        return await self.store.list(application, page_size, page_token)

    async def watch_run(self, run_id: str, poll: float = 1.0) -> AsyncIterator[Run]:
        """The run now, then every change of status, stage or progress, until it has ended."""
        changed = asyncio.Event()
        self._watchers[run_id].add(changed)
        try:
            run = await self.get_run(run_id)
            yield run
            seen = (run.status, run.stage, run.progress)
            while not run.finished:
                with contextlib.suppress(TimeoutError):
                    await within(changed.wait(), poll)
                changed.clear()
                run = await self.store.get(run_id)
                if (run.status, run.stage, run.progress) != seen:
                    seen = (run.status, run.stage, run.progress)
                    yield run
        finally:
            self._watchers[run_id].discard(changed)
            if not self._watchers[run_id]:
                del self._watchers[run_id]

    def notify(self, run_id: str) -> None:
        for event in self._watchers.get(run_id, ()):
            event.set()

    async def describe_dataset(self, application: str, snapshot_id: str = "") -> DatasetView:
        pending = await self.store.pending_decisions()
        if snapshot_id:
            head, examples = await self.store.snapshot(snapshot_id)
            if application and head["application"] != application:
                raise NotFound(f"snapshot {snapshot_id} is of application {head['application']!r}, not {application!r}")
            stats = DatasetStats(head["application"], examples=len(examples), corrections=head["corrections"],
                                 approvals=head["approvals"], duplicates=sum(e.duplicates for e in examples),
                                 first_at=examples[0].decided_at if examples else None,
                                 last_at=examples[-1].decided_at if examples else None)
            return DatasetView(stats, snapshot_id, head["train_examples"], head["eval_examples"], 0, self.threshold,
                               pending, head["reviews"], review_ids=[e.review_id for e in examples])
        if not application.strip():
            raise InvalidArgument("name an application or a snapshot_id")
        stats = await self.store.dataset_stats(application)
        examples = await self.store.examples(application)
        if not examples and await self.store.latest_run(application) is None:
            raise NotFound(f"no dataset for {application!r}: no reviewed answer of it has arrived (reviews.completed)")
        splits = split_examples(examples, self.defaults.eval_fraction)
        async with self.db.connection() as conn:
            new = await self.store.new_corrections(conn, application)
        return DatasetView(stats, snapshot_of(application, splits), sum(1 for _, s in splits if s == dataset.TRAIN),
                           sum(1 for _, s in splits if s == dataset.EVAL), new, self.threshold, pending,
                           sum(1 + e.duplicates for e in examples), last_run=await self.store.latest_run(application))
