"""Asking for runs and reading them: queueing (one queued or running run per model; later requests
join it), retrain.requests, the labels collected from feedback.received, and watching a run change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from psycopg import AsyncConnection

from flywheel.common.db import Database
from flywheel.common.errors import InvalidArgument, NotFound, PoisonEvent
from flywheel.common.tasks import within
from flywheel.predictive.spec import ModelSpec, SpecCatalog, apply_params
from flywheel.proto.events.v1 import common_pb2, models_pb2, predictions_pb2
from flywheel.trainer.store import Run, TrainerStore

log = logging.getLogger(__name__)

LABELS = Counter("flywheel_trainer_labels_total", "feedback.received events, by what became of them.", ["outcome"])
RETRAIN_REQUESTS = Counter("flywheel_trainer_retrain_requests_total", "retrain.requests by outcome.", ["outcome"])


@dataclass(frozen=True)
class RunRequest:
    """What a caller asks for: train `model_name` on event times in [window_start, window_end)."""

    model_name: str
    window_start: datetime | None
    window_end: datetime | None
    params: dict[str, str] = field(default_factory=dict)
    reason: int = models_pb2.RETRAIN_REASON_UNSPECIFIED
    retrain_request_id: str = ""
    drift_event_id: str = ""
    parent_version: int = 0
    # Who asked: the principal of the caller's token, or the service that sent the retrain request.
    requested_by: str = ""


def label_row(feedback: predictions_pb2.FeedbackReceived, received_at: datetime) -> dict[str, Any] | None:
    """The labels-table row of a feedback event, or None when it cannot label a training row
    (no label value, no event time, nothing naming the row)."""
    which = feedback.label.WhichOneof("value")
    key = feedback.entity_id or feedback.request_id
    if which is None or not key or not feedback.HasField("event_time"):
        return None
    observed = feedback.observed_at.ToDatetime(UTC) if feedback.HasField("observed_at") \
        else received_at
    return {
        "label_key": key, "source": int(feedback.source), "feedback_id": feedback.feedback_id,
        "request_id": feedback.request_id, "entity_id": feedback.entity_id, "value_kind": which,
        "flag": feedback.label.flag if which == "flag" else None,
        "number": feedback.label.number if which == "number" else None,
        "text": feedback.label.text if which == "text" else None,
        "entity_keys": dict(feedback.entity_keys),
        "event_time": feedback.event_time.ToDatetime(UTC),
        "observed_at": observed,
    }


def retrain_run_request(event_id: str, request: models_pb2.RetrainRequested, source: str = "") -> RunRequest:
    """The run a retrain.requests event asks for (its request id defaults to the event's id), requested by
    the event's source (the service that sent it)."""
    return RunRequest(
        model_name=request.model_name,
        window_start=request.window_start.ToDatetime(UTC) if request.HasField("window_start") else None,
        window_end=request.window_end.ToDatetime(UTC) if request.HasField("window_end") else None,
        params=dict(request.parameters), reason=request.reason, retrain_request_id=request.request_id or event_id,
        drift_event_id=request.drift_event_id, parent_version=request.parent.version, requested_by=source)


class Runs:
    """The runs asked for and their labels; `wake` tells the scheduler a run was queued."""

    def __init__(self, db: Database, store: TrainerStore, catalog: SpecCatalog, *, code_version: str,
                 wake: Callable[[], None]) -> None:
        self.db = db
        self.store = store
        self.catalog = catalog
        self.code_version = code_version
        self.wake = wake
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)

    # -- asking for runs -----------------------------------------------------------------------

    def check(self, request: RunRequest) -> ModelSpec:
        """The spec a request would train; NotFound / InvalidArgument for what can be checked now."""
        if request.window_start is None or request.window_end is None:
            raise InvalidArgument("window_start and window_end are required: the run trains on event times "
                                  "in [window_start, window_end)")
        if request.window_start >= request.window_end:
            raise InvalidArgument(f"the window is empty: window_start {request.window_start.isoformat()} is not "
                                  f"before window_end {request.window_end.isoformat()}")
        return apply_params(self.catalog.get(request.model_name), request.params)

    def _new_run(self, request: RunRequest) -> Run:
        assert request.window_start is not None and request.window_end is not None
        return Run(id=uuid.uuid4().hex, model_name=request.model_name, status=0, window_start=request.window_start,
                   window_end=request.window_end, params=dict(request.params), reason=request.reason,
                   retrain_request_id=request.retrain_request_id, drift_event_id=request.drift_event_id,
                   parent_version=request.parent_version, code_version=self.code_version,
                   requested_by=request.requested_by)

    async def start_run(self, request: RunRequest) -> tuple[Run, bool]:
        """Queue a run, or return the model's queued/running one (coalesced = True)."""
        self.check(request)
        async with self.db.connection() as conn, conn.transaction():
            run, coalesced = await self.store.create_or_join(conn, self._new_run(request))
        self.wake()
        log.info("run requested", extra={"run_id": run.id, "model": run.model_name, "coalesced": coalesced})
        return run, coalesced

    async def request_retrain(self, conn: AsyncConnection, event_id: str, request: models_pb2.RetrainRequested,
                              source: str = "") -> tuple[Run, bool] | None:
        """Apply a retrain.requests event inside the consumer's transaction.

        A request seen before (same request_id) does nothing; one for a model with a run
        queued or running is recorded as coalesced into that run. Returns None when the
        request is not for this trainer or was seen before.
        """
        if request.kind not in (common_pb2.MODEL_KIND_UNSPECIFIED, common_pb2.MODEL_KIND_PREDICTIVE):
            RETRAIN_REQUESTS.labels("other_kind").inc()
            return None  # LLMs and adapters are the fine-tuner's
        run_request = retrain_run_request(event_id, request, source)
        try:
            self.check(run_request)
        except (NotFound, InvalidArgument) as exc:
            RETRAIN_REQUESTS.labels("rejected").inc()
            raise PoisonEvent(f"retrain request {run_request.retrain_request_id} cannot start a run: {exc}") from exc
        if not await self.store.is_new_request(conn, run_request.retrain_request_id):
            RETRAIN_REQUESTS.labels("duplicate").inc()
            return None
        run, coalesced = await self.store.create_or_join(conn, self._new_run(run_request))
        await self.store.link_request(conn, run_request.retrain_request_id, run.model_name, run.id, coalesced)
        RETRAIN_REQUESTS.labels("coalesced" if coalesced else "started").inc()
        log.info("retrain requested", extra={"request_id": run_request.retrain_request_id, "run_id": run.id,
                                             "model": run.model_name, "coalesced": coalesced})
        self.wake()  # the scheduler also hears the NOTIFY sent when this transaction commits
        return run, coalesced

    async def add_labels(self, conn: AsyncConnection, feedback: list[tuple[predictions_pb2.FeedbackReceived, datetime]],
                         ) -> int:
        rows = []
        for message, received_at in feedback:
            row = label_row(message, received_at)
            if row is None:
                LABELS.labels("unusable").inc()
            else:
                rows.append(row)
        stored = await self.store.upsert_labels(conn, rows)
        LABELS.labels("stored").inc(len(rows))
        return stored

    # -- reading runs --------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> Run:
        return await self.store.get(run_id)

    async def list_runs(self, model_name: str, page_size: int, page_token: str) -> tuple[list[Run], str]:
        return await self.store.list(model_name, page_size, page_token)

    async def watch_run(self, run_id: str, poll: float = 1.0) -> AsyncIterator[Run]:
        """The run now, then every change of status, stage or progress, until it has ended."""
        changed = asyncio.Event()
        self._watchers[run_id].add(changed)
        try:
            run = await self.store.get(run_id)
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
        """Tell the watchers of a run that it changed."""
        for event in self._watchers.get(run_id, ()):
            event.set()
