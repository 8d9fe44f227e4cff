"""The evaluator's use cases, free of any transport: gRPC, the CLI and the event handlers
all come through here.

An evaluation is (model, candidate version, baseline). models.registered queues one in the
database (idempotently: the event id is recorded in the same transaction); a worker claims
queued ones and executes each: spec and versions from the registry -> the recent labelled rows
(from the candidate's `holdout_start` on, known before the evaluation started; waiting for more
labels up to `max_wait_seconds`) -> point-in-time features from the feature store -> both models
score the same rows -> metrics, slices, calibration, gate -> the report and evaluations.completed
in one transaction (outbox). A crash before that commit leaves the evaluation `running`; start-up
queues it again, so it is completed exactly once.

LLM versions (adapters, LLMs, distilled students, prompt templates) tagged with an application that has a
golden set go through the same queue, worker and completion; llm_evaluation.py does the judging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram
from psycopg import AsyncConnection

from flywheel.common.clients.ports import FeatureSource, ModelRegistry
from flywheel.common.db import Database
from flywheel.common.errors import (
    FailedPrecondition,
    FlywheelError,
    InvalidArgument,
    NotFound,
    PoisonEvent,
    Unavailable,
)
from flywheel.common.events import Event
from flywheel.common.jobs import JobScheduler
from flywheel.common.outbox import enqueue
from flywheel.common.tasks import within
from flywheel.common.topics import EVALUATIONS_COMPLETED
from flywheel.evaluator import report as r
from flywheel.evaluator.llm_evaluation import LLM_KINDS, LlmEvaluations
from flywheel.evaluator.store import EVALUATION_QUEUE, LLM, EvaluationRow, EvaluatorStore, Label
from flywheel.predictive.scoring import ScoringModel, load_model
from flywheel.predictive.spec import ModelSpec, SpecCatalog, entity_keys
from flywheel.proto.events.v1 import common_pb2, models_pb2, predictions_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as reg

log = logging.getLogger(__name__)

SOURCE = "flywheel/evaluator"
CHAMPION = "champion"
HOLDOUT_TAG = "holdout_start"
REPORT_PREFIX = "evaluator://evaluations/"
Verdict = models_pb2.EvaluationVerdict

EVALUATIONS = Counter("flywheel_evaluator_evaluations_total", "Completed evaluations, by verdict.", ["verdict"])
EVALUATION_SECONDS = Histogram("flywheel_evaluator_evaluation_seconds",
                               "Wall time of an evaluation, from start to completion (waiting for labels included).",
                               buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
EVALUATIONS_ACTIVE = Gauge("flywheel_evaluator_evaluations_active", "Evaluations executing in this process.")
LABELS = Counter("flywheel_evaluator_labels_total", "feedback.received events, by what became of them.", ["outcome"])
REGISTERED = Counter("flywheel_evaluator_registered_total", "models.registered events, by outcome.", ["outcome"])


class NotReady(FlywheelError):
    """Not enough labelled data yet; the message says what is missing."""


@dataclass(frozen=True)
class EvaluationRequest:
    model_name: str
    candidate_version: int
    # 0 = the champion when the evaluation runs.
    baseline_version: int = 0
    # The principal that asked (audit).
    requested_by: str = ""


def label_row(feedback: predictions_pb2.FeedbackReceived, received_at: datetime) -> dict[str, Any] | None:
    """The labels-table row of a feedback event, or None when it cannot label an evaluation row
    (not a flag, no event time, nothing naming the row). Same rules as the trainer's labels."""
    key = feedback.entity_id or feedback.request_id
    if feedback.label.WhichOneof("value") != "flag" or not key or not feedback.HasField("event_time"):
        return None
    observed = feedback.observed_at.ToDatetime(UTC) if feedback.HasField("observed_at") else received_at
    return {"label_key": key, "source": int(feedback.source), "feedback_id": feedback.feedback_id,
            "flag": feedback.label.flag, "entity_keys": dict(feedback.entity_keys),
            "event_time": feedback.event_time.ToDatetime(UTC), "observed_at": observed}


def check_request(request: EvaluationRequest) -> None:
    if not request.model_name:
        raise InvalidArgument("model_name is empty")
    if request.candidate_version <= 0:
        raise InvalidArgument(f"candidate_version must be a positive version number, got {request.candidate_version}")
    if request.baseline_version < 0:
        raise InvalidArgument(f"baseline_version must be 0 (the champion) or a version number, "
                              f"got {request.baseline_version}")


def check_features(columns: Mapping[str, Any], *models: ScoringModel | None) -> None:
    """ValueError naming the features a model needs that the feature service did not return."""
    absent = sorted({f for m in models if m is not None for f in m.feature_names} - set(columns))
    if absent:
        raise ValueError(f"the model needs feature(s) {', '.join(absent)}, which the feature service "
                         "does not provide")


class Evaluator:
    def __init__(self, db: Database, catalog: SpecCatalog, features: FeatureSource, registry: ModelRegistry, *,
                 max_rows: int = 5000, min_rows: int = 200, min_positives: int = 5, max_wait_seconds: float = 300.0,
                 label_poll_seconds: float = 10.0, lookback_seconds: float = 7 * 86400.0, min_slice_rows: int = 50,
                 poll_interval: float = 1.0, max_concurrent: int = 2, llm: LlmEvaluations | None = None) -> None:
        self.db = db
        self.store = EvaluatorStore(db)
        self.llm = llm
        self.catalog = catalog
        self.features = features
        self.registry = registry
        self.max_rows = max_rows
        self.min_rows = min_rows
        self.min_positives = min_positives
        self.max_wait = timedelta(seconds=max_wait_seconds)
        self.label_poll_seconds = label_poll_seconds
        self.lookback = timedelta(seconds=lookback_seconds)
        self.min_slice_rows = min_slice_rows
        self._scoring = asyncio.Lock()  # torch on a shared CPU: one scoring at a time
        self.scheduler: JobScheduler[EvaluationRow] = JobScheduler(
            "evaluator", claim=self.store.claim_next, execute=self._execute_queued, key=lambda row: row.id,
            max_concurrent=max_concurrent, poll_interval=poll_interval, listen_url=db.url,
            channel=EVALUATION_QUEUE.channel(db.schema))

    # -- events --------------------------------------------------------------------------------

    async def add_labels(self, conn: AsyncConnection,
                         feedback: list[tuple[predictions_pb2.FeedbackReceived, datetime]]) -> int:
        rows = []
        for message, received_at in feedback:
            row = label_row(message, received_at)
            if row is None:
                LABELS.labels("unusable").inc()
            else:
                rows.append(row)
        LABELS.labels("stored").inc(len(rows))
        return await self.store.upsert_labels(conn, rows)

    async def on_registered(self, conn: AsyncConnection, event_id: str, registered: models_pb2.ModelRegistered,
                            source: str = "") -> str | None:
        """Queue an evaluation of a newly registered predictive version (inside the consumer's transaction).

        Returns the evaluation id, or None when the version is not for this evaluator (another kind,
        no model spec) or this event already queued one.
        """
        if registered.kind in LLM_KINDS and self.llm is not None:
            return await self._queue_llm(conn, event_id, registered, source)
        if registered.kind != common_pb2.MODEL_KIND_PREDICTIVE:
            REGISTERED.labels("other_kind").inc()
            return None
        name, version = registered.model.name, registered.model.version
        if not name or version <= 0:
            raise PoisonEvent(f"models.registered event {event_id} names no version (model {name!r}, "
                              f"version {version})")
        try:
            self.catalog.get(name)
        except NotFound:
            REGISTERED.labels("no_spec").inc()
            log.info("no model spec: version not evaluated", extra={"model": name, "version": version})
            return None
        except InvalidArgument as exc:
            REGISTERED.labels("bad_spec").inc()
            log.warning("model spec broken: version not evaluated",
                        extra={"model": name, "version": version, "error": str(exc)})
            return None
        row = EvaluationRow(id=str(uuid.uuid4()), model_name=name, candidate_version=version,
                            trigger_event_id=event_id, requested_by=source)
        if not await self.store.queue(conn, row):
            REGISTERED.labels("duplicate").inc()
            return None
        REGISTERED.labels("queued").inc()
        log.info("evaluation queued", extra={"evaluation_id": row.id, "model": name, "version": version})
        self.wake()  # the worker also hears the NOTIFY sent when this transaction commits
        return row.id

    async def _queue_llm(self, conn: AsyncConnection, event_id: str, registered: models_pb2.ModelRegistered,
                         source: str) -> str | None:
        assert self.llm is not None
        row = self.llm.row_for(registered, event_id, source)
        reason = await self.llm.skip_reason(conn, registered)
        if reason:
            REGISTERED.labels(reason).inc()
            log.info("LLM version not evaluated", extra={"model": row.model_name, "version": row.candidate_version,
                                                         "reason": reason})
            return None
        if not await self.store.queue(conn, row):
            REGISTERED.labels("duplicate").inc()
            return None
        REGISTERED.labels("queued_llm").inc()
        log.info("LLM evaluation queued", extra={"evaluation_id": row.id, "model": row.model_name,
                                                 "version": row.candidate_version})
        self.wake()
        return row.id

    # -- the Evaluate RPC and reads ------------------------------------------------------------

    async def evaluate_now(self, request: EvaluationRequest) -> EvaluationRow:
        """Run an evaluation now, without waiting for labels (too few -> verdict ERROR), emit it, return it."""
        check_request(request)
        if self.llm is not None:
            candidate = await self.registry.get_version(request.model_name, request.candidate_version)
            if candidate is not None and candidate.kind in LLM_KINDS:
                return await self._evaluate_llm_now(request, candidate)
        self.catalog.get(request.model_name)  # NotFound / InvalidArgument before anything is stored
        if await self.registry.get_version(request.model_name, request.candidate_version) is None:
            raise NotFound(f"model {request.model_name!r} has no version {request.candidate_version} in the registry")
        if request.baseline_version and await self.registry.get_version(
                request.model_name, request.baseline_version) is None:
            raise NotFound(f"model {request.model_name!r} has no version {request.baseline_version} (baseline) "
                           "in the registry")
        row = await self.store.create_running(EvaluationRow(
            id=str(uuid.uuid4()), model_name=request.model_name, candidate_version=request.candidate_version,
            requested_baseline=request.baseline_version, requested_by=request.requested_by))
        await self._execute(row, wait=False)
        return await self.store.get(row.id)

    async def _evaluate_llm_now(self, request: EvaluationRequest, candidate: reg.ModelVersion) -> EvaluationRow:
        assert self.llm is not None
        await self.llm.check_evaluable(candidate)
        if request.baseline_version and await self.registry.get_version(
                request.model_name, request.baseline_version) is None:
            raise NotFound(f"model {request.model_name!r} has no version {request.baseline_version} (baseline) "
                           "in the registry")
        row = await self.store.create_running(EvaluationRow(
            id=str(uuid.uuid4()), model_name=request.model_name, candidate_version=request.candidate_version,
            requested_baseline=request.baseline_version, requested_by=request.requested_by, kind=LLM))
        # No labels to wait for, but inference may answer UNAVAILABLE while it loads a pinned version: wait for it.
        await self._execute(row, wait=True)
        return await self.store.get(row.id)

    async def get(self, evaluation_id: str) -> EvaluationRow:
        if not evaluation_id:
            raise InvalidArgument("evaluation_id is empty")
        return await self.store.get(evaluation_id)

    async def list(self, model_name: str, page_size: int, page_token: str) -> tuple[list[EvaluationRow], str]:
        return await self.store.list(model_name, page_size, page_token)

    # -- the worker ----------------------------------------------------------------------------

    def wake(self) -> None:
        self.scheduler.wake()

    async def start(self) -> None:
        requeued = await self.store.requeue_running()
        if requeued:
            log.warning("evaluations interrupted by a restart queued again", extra={"count": requeued})
        self.scheduler.start()

    async def stop(self) -> None:
        """Cancel the worker and the evaluations in progress (they stay `running`: the next start queues them)."""
        await self.scheduler.stop()

    # -- executing -----------------------------------------------------------------------------

    async def _execute_queued(self, row: EvaluationRow) -> None:
        await self._execute(row, wait=True)

    async def _execute(self, row: EvaluationRow, *, wait: bool) -> None:
        """Evaluate until done (ERROR on anything that cannot be fixed by waiting), then complete.

        Cancellation (shutdown) leaves the row `running`: the next start queues it again.
        """
        started = time.monotonic()
        first_start = row.started_at or datetime.now(UTC)
        deadline = first_start + self.max_wait if wait else datetime.now(UTC)
        EVALUATIONS_ACTIVE.inc()
        log.info("evaluation started", extra={"evaluation_id": row.id, "model": row.model_name,
                                              "candidate": row.candidate_version, "attempt": row.attempts})
        found: dict[str, common_pb2.Lineage] = {}
        try:
            while True:
                try:
                    outcome = await self._evaluate(row, found)
                    break
                except (NotReady, Unavailable) as exc:
                    if datetime.now(UTC) >= deadline:
                        waited = (datetime.now(UTC) - first_start).total_seconds()
                        message = f"{exc} (gave up after waiting {waited:.0f}s)" if wait else str(exc)
                        outcome = self._error(row, found, message)
                        break
                    log.info("evaluation waiting", extra={"evaluation_id": row.id, "reason": str(exc)})
                    await asyncio.sleep(min(self.label_poll_seconds,
                                            max(0.0, (deadline - datetime.now(UTC)).total_seconds())))
                except FlywheelError as exc:
                    outcome = self._error(row, found, str(exc))
                    break
                except (ValueError, KeyError, RuntimeError) as exc:  # a broken artifact or feature data
                    log.exception("evaluation failed", extra={"evaluation_id": row.id})
                    outcome = self._error(row, found, f"{type(exc).__name__}: {exc}")
                    break
            await self._complete(outcome)
        finally:
            EVALUATIONS_ACTIVE.dec()
        EVALUATION_SECONDS.observe(time.monotonic() - started)

    @staticmethod
    def _error(row: EvaluationRow, found: Mapping[str, common_pb2.Lineage],
               message: str) -> tuple[EvaluationRow, common_pb2.Lineage]:
        row.verdict, row.error = Verdict.EVALUATION_VERDICT_ERROR, message
        row.report = {**row.report, "error": message}
        return row, found.get("lineage", common_pb2.Lineage())

    async def _version(self, name: str, version: int = 0, alias: str = "") -> reg.ModelVersion | None:
        return await self.registry.get_version(name, version, alias)

    async def _evaluate(self, row: EvaluationRow,
                        found: dict[str, common_pb2.Lineage]) -> tuple[EvaluationRow, common_pb2.Lineage]:
        """One attempt; NotReady / Unavailable when waiting may help, another FlywheelError when not."""
        if row.kind == LLM:
            return await self._evaluate_llm(row, found)
        spec = self.catalog.get(row.model_name)
        candidate, baseline = await self._versions(row, found)

        as_of = datetime.now(UTC)
        labels, start, window = await self._labels(spec, candidate, as_of)
        cand_model = load_model(await self.registry.download(row.model_name, candidate.version))
        base_model = load_model(await self.registry.download(row.model_name, baseline.version)) if baseline else None
        columns = await self._features(spec, labels)
        check_features(columns, cand_model, base_model)
        y = np.array([1.0 if label.flag else 0.0 for label in labels])
        async with self._scoring:
            p_cand = await asyncio.to_thread(cand_model.predict_proba, columns)
            p_base = await asyncio.to_thread(base_model.predict_proba, columns) if base_model else None
        categories = {f: columns[f] for f in spec.categorical if f in columns}
        comparison = r.compare(y, p_cand, cand_model.threshold, p_base,
                               base_model.threshold if base_model else 0.5, categories, self.min_slice_rows)
        checks = r.gate_checks(spec.gate, comparison.candidate, comparison.baseline, row.baseline_version)
        row.verdict = Verdict.EVALUATION_VERDICT_PASSED if r.passed(checks) else Verdict.EVALUATION_VERDICT_FAILED
        row.candidate_metrics = r.finite(comparison.candidate)
        row.baseline_metrics = r.finite(comparison.baseline) if comparison.baseline is not None else {}
        row.checks = [asdict(c) for c in checks]
        row.data_start, row.data_end, row.rows = labels[0].event_time, labels[-1].event_time + timedelta(
            microseconds=1), len(labels)
        row.report.update({
            **comparison.to_json(), "checks": row.checks, "gate": spec.gate.model_dump(),
            "data": {"window": window, "holdout_start": start.isoformat() if start else None,
                     "labels_observed_before": as_of.isoformat(), "label_source": spec.label.source,
                     "feature_service": spec.features.feature_service, "rows": len(labels),
                     "start": row.data_start.isoformat(), "end": row.data_end.isoformat(),
                     "max_rows": self.max_rows},
            "baseline_version": row.baseline_version,
        })
        return row, candidate.lineage

    async def _versions(self, row: EvaluationRow, found: dict[str, common_pb2.Lineage],
                        ) -> tuple[reg.ModelVersion, reg.ModelVersion | None]:
        """The candidate (its lineage noted in `found`) and the baseline: the version asked for, else the champion
        (None: there is none)."""
        candidate = await self._version(row.model_name, row.candidate_version)
        if candidate is None:
            raise NotFound(f"model {row.model_name!r} has no version {row.candidate_version} in the registry")
        found["lineage"] = candidate.lineage
        row.report["candidate"] = {"version": candidate.version, "tags": dict(candidate.tags)}
        if row.requested_baseline:
            baseline = await self._version(row.model_name, row.requested_baseline)
            if baseline is None:
                raise NotFound(f"model {row.model_name!r} has no version {row.requested_baseline} (baseline)")
        else:
            baseline = await self._version(row.model_name, alias=CHAMPION)
        row.baseline_version = baseline.version if baseline is not None else 0
        return candidate, baseline

    async def _evaluate_llm(self, row: EvaluationRow,
                            found: dict[str, common_pb2.Lineage]) -> tuple[EvaluationRow, common_pb2.Lineage]:
        if self.llm is None:
            raise FailedPrecondition("this evaluator has no LLM evaluation configured")
        candidate, baseline = await self._versions(row, found)
        await self.llm.evaluate(row, candidate, baseline)
        return row, candidate.lineage

    async def _labels(self, spec: ModelSpec, candidate: reg.ModelVersion,
                      as_of: datetime) -> tuple[list[Label], datetime | None, str]:
        source = spec.label.source_code
        tag = candidate.tags.get(HOLDOUT_TAG, "")
        if tag:
            try:
                start: datetime | None = datetime.fromisoformat(tag.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidArgument(f"version {candidate.version} has a {HOLDOUT_TAG} tag {tag!r} that is not "
                                      "an ISO-8601 time") from None
            window = f"event time >= {HOLDOUT_TAG} {tag} (the candidate's held-out slice)"
        else:
            newest = await self.store.newest_event_time(source, as_of)
            start = newest - self.lookback if newest else None
            window = (f"the last {self.lookback.total_seconds():g}s of labelled data (the candidate has no "
                      f"{HOLDOUT_TAG} tag)")
        labels = await self.store.recent_labels(source, list(spec.entity_keys), start, as_of, self.max_rows)
        positives = sum(1 for label in labels if label.flag)
        if len(labels) < self.min_rows or positives < self.min_positives:
            raise NotReady(
                f"not enough labelled data to evaluate {spec.name}:{candidate.version}: {len(labels)} "
                f"{spec.label.source} flag labels with {positives} positives in {window}, known before "
                f"{as_of.isoformat()}; needs at least {self.min_rows} rows (min_rows) and {self.min_positives} "
                "positives (min_positives). Wait for more feedback.received labels, or lower "
                "FLYWHEEL_EVALUATOR_MIN_ROWS / FLYWHEEL_EVALUATOR_MIN_POSITIVES")
        return labels, start, window

    async def _features(self, spec: ModelSpec, labels: list[Label]) -> dict[str, list[Any]]:
        got = await self.features.historical(spec.features.feature_service,
                                             [entity_keys(spec, label) for label in labels],  # type: ignore[arg-type]
                                             [label.event_time for label in labels])
        return {name: [row[i] for row in got.rows] for i, name in enumerate(got.names)}

    async def _complete(self, outcome: tuple[EvaluationRow, common_pb2.Lineage]) -> None:
        """Store the result and emit evaluations.completed in one transaction, then tell the registry."""
        row, lineage = outcome
        row.completed_at = datetime.now(UTC)
        report_uri = REPORT_PREFIX + row.id
        row.report.setdefault("evaluation_id", row.id)
        event = models_pb2.EvaluationCompleted(
            evaluation_id=row.id, model_name=row.model_name, candidate_version=row.candidate_version,
            baseline_version=row.baseline_version, verdict=row.verdict,  # type: ignore[arg-type]
            candidate_metrics=row.candidate_metrics, baseline_metrics=row.baseline_metrics,
            checks=[models_pb2.GateCheck(**c) for c in row.checks], report_uri=report_uri)
        event.lineage.CopyFrom(lineage)
        event.lineage.eval_report_refs.append(report_uri)
        event.completed_at.FromDatetime(row.completed_at)
        async with self.db.connection() as conn, conn.transaction():
            await self.store.complete(conn, row)
            await enqueue(conn, Event(EVALUATIONS_COMPLETED, row.model_name, event, SOURCE))
        verdict = Verdict.Name(row.verdict).removeprefix("EVALUATION_VERDICT_").lower()  # type: ignore[arg-type]
        EVALUATIONS.labels(verdict).inc()
        log.info("evaluation completed", extra={
            "evaluation_id": row.id, "model": row.model_name, "candidate": row.candidate_version,
            "baseline": row.baseline_version, "verdict": verdict, "rows": row.rows, "error": row.error})
        with contextlib.suppress(FlywheelError, TimeoutError):  # best effort: the event carries the ref too
            await within(self.registry.record_lineage(
                row.model_name, row.candidate_version, common_pb2.Lineage(eval_report_refs=[report_uri])), 10.0)
