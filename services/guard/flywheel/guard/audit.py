"""The audit trail: every verdict becomes a row in the guard's `verdicts` table and a GuardVerdict on
guard.verdicts (through the transactional outbox); an escalation also becomes a ReviewRequested on
reviews.requested. Nothing here carries raw PII: the redacted text, span kinds and offsets, scores.

Why an outbox written in batches (and not the BoundedPublisher): an audit trail must not lose
entries when the broker is slow or down, and the embedded broker keeps nothing on disk, so the
database is the record. Why in batches, off the request path: a transaction per check would add a
database round trip (~1-2 ms) to every check. `record` queues the verdict and returns; a writer task
commits the queued verdicts and their events in one transaction per batch (group commit) and retries
a failed batch until it is written -- it never drops one. The queue is bounded: when the database
falls behind, checks wait for room (back pressure), they are not dropped. An escalation waits until
its batch is committed before the check answers, so a review request is never lost to a crash; a
plain verdict can be lost only if the process dies within the few milliseconds before its batch
commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Gauge
from psycopg import OperationalError
from psycopg_pool import PoolTimeout

from flywheel.common.events import Event
from flywheel.common.tasks import within
from flywheel.common.topics import GUARD_VERDICTS, REVIEWS_REQUESTED
from flywheel.guard.checks import BLOCK, ESCALATE, INPUT, REDACT, Verdict, VerdictRecorder, redact_all
from flywheel.proto.events.v1 import common_pb2, guard_pb2, predictions_pb2, reviews_pb2

log = logging.getLogger(__name__)
SOURCE = "guard"
# Failures of the database itself: the batch is retried until it is written.
OUTAGES = (OperationalError, PoolTimeout, OSError)

AUDIT_QUEUE = Gauge("flywheel_guard_audit_queue_depth", "Verdicts waiting to be written.")
AUDIT_WRITTEN = Counter("flywheel_guard_audit_written_total", "Verdicts written with their events.")
AUDIT_REFUSED = Counter("flywheel_guard_audit_refused_total", "Verdicts the database refused (not written).")
AUDIT_RETRIES = Counter("flywheel_guard_audit_retries_total", "Audit batches that failed and were retried.")
ACTIONS = {"allow": guard_pb2.GUARD_ACTION_ALLOW, REDACT: guard_pb2.GUARD_ACTION_REDACT,
           BLOCK: guard_pb2.GUARD_ACTION_BLOCK, ESCALATE: guard_pb2.GUARD_ACTION_REVIEW}
STAGES = {INPUT: guard_pb2.GUARD_STAGE_INPUT, "output": guard_pb2.GUARD_STAGE_OUTPUT}


def row_of(verdict: Verdict) -> dict[str, Any]:
    request = verdict.request
    assert request is not None
    return {"verdict_id": verdict.verdict_id, "request_id": request.request_id, "application": verdict.application,
            "policy_version": verdict.policy_version, "stage": verdict.stage, "action": verdict.action,
            "blocked": verdict.blocked, "escalated": verdict.escalated, "rule": verdict.rule,
            "rails_fired": verdict.rails_fired, "scores": verdict.scores,
            "spans": [{"kind": s.kind, "start": s.start, "end": s.end} for s in verdict.spans],
            "redacted_text": verdict.redacted_text, "principal": request.principal, "detectors": verdict.detectors,
            "stream_window": request.stream_window, "latency_ms": verdict.latency_ms,
            "checked_at": verdict.checked_at}


def _timestamp(verdict: Verdict) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(verdict.checked_at)
    return stamp


def verdict_event(verdict: Verdict) -> Event:
    request = verdict.request
    assert request is not None
    findings = [guard_pb2.GuardFinding(category=r.rail if not r.category else f"{r.rail}:{r.category}",
                                       detail=r.detail, score=r.score) for r in verdict.rails if r.fired]
    findings += [guard_pb2.GuardFinding(category=f"pii.{s.kind}", detail=verdict.rule or "pii", score=1.0,
                                        start=s.start, end=s.end) for s in verdict.spans]
    payload = guard_pb2.GuardVerdict(
        verdict_id=verdict.verdict_id, request_id=request.request_id, stage=STAGES[verdict.stage],
        policy=verdict.application, action=ACTIONS[verdict.action], findings=findings,
        latency_ms=verdict.latency_ms, checked_at=_timestamp(verdict), application=verdict.application,
        policy_version=verdict.policy_version, scores=verdict.scores, rails_fired=verdict.rails_fired,
        blocked=verdict.blocked, rule=verdict.rule, redacted_text=verdict.redacted_text,
        principal=request.principal, detectors=verdict.detectors, stream_window=request.stream_window)
    return Event(GUARD_VERDICTS, request.request_id or verdict.verdict_id, payload, SOURCE,
                 id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"flywheel-guard/verdict/{verdict.verdict_id}")),
                 time=verdict.checked_at)


def review_event(verdict: Verdict) -> Event:
    """The review request of an escalated verdict: the redacted exchange, the chunks, why it was flagged."""
    request = verdict.request
    assert request is not None
    if verdict.stage == INPUT:
        messages = [predictions_pb2.ChatMessage(role="user", content=verdict.redacted_text)]
        completion = ""
    else:
        messages = [predictions_pb2.ChatMessage(role="user", content=verdict.redacted_user_input)] \
            if request.user_input else []
        completion = verdict.redacted_answer_so_far
    fired = ", ".join(f"{r.rail} {r.score:.2f}" for r in verdict.rails if r.fired)
    review = reviews_pb2.ReviewRequested(
        review_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"flywheel-guard/review/{verdict.verdict_id}")),
        request_id=request.request_id or verdict.verdict_id,
        model=common_pb2.ModelRef(name=verdict.application), reason=reviews_pb2.REVIEW_REASON_GUARD_FLAGGED,
        priority=2 if verdict.blocked else 1,
        llm=predictions_pb2.LlmExchange(messages=messages, completion=completion, application=verdict.application,
                                        finish_reason="content_filter" if verdict.blocked else ""),
        guard_verdict_id=verdict.verdict_id,
        context={"guard_stage": verdict.stage, "guard_rule": verdict.rule, "guard_category": verdict.category,
                 "guard_blocked": "yes" if verdict.blocked else "no", "guard_rails_fired": fired,
                 "guard_policy_version": str(verdict.policy_version), "guard_detectors": verdict.detectors},
        requested_at=_timestamp(verdict),
        chunks=[reviews_pb2.ReviewChunk(chunk_id=c.chunk_id, document_id=c.document_id, title=c.title,
                                        text=redact_all(c.text), score=c.score) for c in request.context])
    return Event(REVIEWS_REQUESTED, review.request_id, review, SOURCE, id=review.review_id, time=verdict.checked_at)


class AuditWriter(VerdictRecorder):
    def __init__(self, store: Any, *, max_queue: int = 10_000, max_batch: int = 200) -> None:
        """`store` writes (rows, events) in one transaction (`GuardStore.record_verdicts`)."""
        self.store = store
        self.max_batch = max_batch
        self.queue: asyncio.Queue[tuple[dict[str, Any], list[Event], asyncio.Future[None] | None]] = \
            asyncio.Queue(max_queue)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="guard-audit-writer")

    async def stop(self, drain_timeout: float = 10.0) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await within(self.queue.join(), drain_timeout)
        if not self.queue.empty():
            log.error("guard audit entries not written at shutdown", extra={"pending": self.queue.qsize()})
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def record(self, verdict: Verdict) -> None:
        events = [verdict_event(verdict)]
        done: asyncio.Future[None] | None = None
        if verdict.escalated:
            events.append(review_event(verdict))
            done = asyncio.get_running_loop().create_future()
        await self.queue.put((row_of(verdict), events, done))  # waits while the queue is full
        AUDIT_QUEUE.set(self.queue.qsize())
        if done is not None:
            await asyncio.shield(done)

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            AUDIT_QUEUE.set(self.queue.qsize())
            try:
                await self._write(batch)
            finally:
                for _, _, done in batch:
                    if done is not None and not done.done():
                        done.set_result(None)
                    self.queue.task_done()

    async def _write(self, batch: list[tuple[dict[str, Any], list[Event], asyncio.Future[None] | None]]) -> None:
        """Write the batch, retrying outages until it is written. A batch refused for another reason is
        written entry by entry, so one bad entry (logged, counted) cannot hold up the others."""
        backoff = 0.1
        while True:
            try:
                await self.store.record_verdicts([b[0] for b in batch], [e for b in batch for e in b[1]])
                AUDIT_WRITTEN.inc(len(batch))
                return
            except OUTAGES as exc:
                AUDIT_RETRIES.inc()
                log.warning("guard audit batch not written; retrying",
                            extra={"verdicts": len(batch), "error": repr(exc), "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:
                if len(batch) == 1:
                    AUDIT_REFUSED.inc()
                    log.error("guard audit entry refused", extra={"verdict_id": batch[0][0]["verdict_id"],
                                                                  "error": repr(exc)})
                    return
                for entry in batch:
                    await self._write([entry])
                return
