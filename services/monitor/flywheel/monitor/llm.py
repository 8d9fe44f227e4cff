"""Online scoring of live LLM answers: `predictions.logged` events with `llm` set, grouped by application into
windows; each closed window is scored, compared with the application's reference, and a quality drop becomes a
`drift.detected`, a `retrain.requests` for the fine-tuner and review samples, written in the ingest's
transaction through the outbox. No SQL here (`llm_store.py`), no transport (`handlers.py`).

Replays are harmless: a generation is keyed by its request id and dropped when stored already; window
assignment runs under a row lock of the application; feedback is keyed by its feedback id; event ids of
what a window emits derive from the window id.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from psycopg import AsyncConnection

from flywheel.common.events import Event
from flywheel.common.outbox import enqueue
from flywheel.common.topics import DRIFT_DETECTED, RETRAIN_REQUESTS, REVIEWS_REQUESTED
from flywheel.monitor import llm_store as store
from flywheel.monitor import metrics
from flywheel.monitor.config import MonitorSettings
from flywheel.monitor.llm_scores import (
    METRICS,
    QualityDecision,
    Thresholds,
    WindowScores,
    aggregate,
    feedback_negative,
    judge,
    pooled,
    review_order,
    score_generation,
)
from flywheel.monitor.llm_store import AppState, OpenWindow
from flywheel.proto.events.v1 import common_pb2, models_pb2, monitoring_pb2, predictions_pb2, reviews_pb2

log = logging.getLogger(__name__)
SOURCE = "flywheel-monitor"
SERVING_ARMS = (predictions_pb2.PREDICTION_ARM_CHAMPION, predictions_pb2.PREDICTION_ARM_CHALLENGER)
CHAMPION = predictions_pb2.PREDICTION_ARM_CHAMPION
KINDS = {"lora_adapter": common_pb2.MODEL_KIND_LORA_ADAPTER, "llm": common_pb2.MODEL_KIND_LLM}
ANSWER_ONLY_TEXTS = frozenset({"approved", "corrected", "rejected", "thumbs_up", "thumbs_down"})


def sampled(request_id: str, rate: float) -> bool:
    """Deterministic sampling by request id (a replay samples the same generations)."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(b"monitor-llm:" + request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


@dataclass
class Generation:
    request_id: str
    application: str
    model_name: str
    model_version: int
    arm: int
    ts: datetime
    exchange: predictions_pb2.LlmExchange
    groundedness: float | None
    refused: bool
    pii_kinds: tuple[str, ...]

    def row(self, window_id: str) -> dict:
        return {"request_id": self.request_id, "application": self.application, "model_name": self.model_name,
                "model_version": self.model_version, "arm": self.arm, "window_id": window_id, "ts": self.ts,
                "groundedness": self.groundedness, "refused": self.refused, "pii_kinds": ",".join(self.pii_kinds),
                "finish_reason": self.exchange.finish_reason, "exchange": self.exchange.SerializeToString()}


@dataclass
class LlmIngestResult:
    generations: int = 0
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    windows_closed: int = 0
    alerts: int = 0


def generation_of(message: predictions_pb2.PredictionLogged, event_time: datetime) -> Generation | str:
    """The scored generation of a logged event, or why it is skipped (not_llm, arm, no_application)."""
    if not message.HasField("llm"):
        return "not_llm"
    if message.arm not in SERVING_ARMS:
        return "arm"  # evaluation (pinned versions) and shadow answers reach no user
    llm = message.llm
    if not llm.application:
        return "no_application"
    score = score_generation(llm.completion, llm.prompt, llm.finish_reason, len(llm.context_chunk_ids))
    ts = message.timestamp.ToDatetime(tzinfo=UTC) if message.HasField("timestamp") else event_time
    return Generation(message.request_id, llm.application, message.model.name, message.model.version,
                      int(message.arm), ts, llm, score.groundedness, score.refused, score.pii_kinds)


class OnlineScoring:
    """Applies batches of decoded events inside the caller's transaction."""

    def __init__(self, settings: MonitorSettings) -> None:
        s = settings
        self.settings = s
        self.thresholds = Thresholds(s.llm_groundedness_drop, s.llm_refusal_rise, s.llm_pii_leak_rate,
                                     s.llm_negative_feedback_rate, s.llm_min_scored)
        self.sources = [int(predictions_pb2.FeedbackSource.Value(f"FEEDBACK_SOURCE_{name.upper()}"))
                        for name in s.llm_feedback_sources]

    # -- generations ----------------------------------------------------------------------------

    async def predictions(self, conn: AsyncConnection, events: list[Event], now: datetime | None = None,
                          ) -> LlmIngestResult:
        now = now or datetime.now(UTC)
        result = LlmIngestResult()
        if not self.settings.llm_scoring:
            return result
        fresh: dict[str, Generation] = {}
        for event in events:
            message = event.payload
            assert isinstance(message, predictions_pb2.PredictionLogged)
            if not message.HasField("llm"):
                continue
            if not sampled(message.request_id, self.settings.llm_sample_rate):
                result.skipped["not_sampled"] = result.skipped.get("not_sampled", 0) + 1
                continue
            got = generation_of(message, event.time)
            if isinstance(got, str):
                result.skipped[got] = result.skipped.get(got, 0) + 1
                continue
            fresh.setdefault(got.request_id, got)
        for reason, n in result.skipped.items():
            metrics.LLM_SKIPPED.labels(reason).inc(n)
        if not fresh:
            return result
        states = await store.lock_applications(conn, sorted({g.application for g in fresh.values()}))
        for request_id in await store.stored_requests(conn, list(fresh)):
            del fresh[request_id]
            result.duplicates += 1
        by_app: dict[str, list[Generation]] = {}
        for g in fresh.values():  # arrival order
            by_app.setdefault(g.application, []).append(g)
        for application in sorted(by_app):
            await self._assign(conn, states[application], by_app[application], now, result)
            metrics.LLM_GENERATIONS.labels(application).inc(len(by_app[application]))
        result.generations = len(fresh)
        return result

    async def _assign(self, conn: AsyncConnection, state: AppState, generations: list[Generation], now: datetime,
                      result: LlmIngestResult) -> None:
        window = await store.open_window(conn, state.open_window_id) if state.open_window_id else None
        pending: list[Generation] = []

        async def flush() -> None:
            assert window is not None
            await store.insert_generations(conn, [g.row(window.window_id) for g in pending])
            await store.grow_window(conn, window)
            pending.clear()

        for g in generations:
            if g.arm == CHAMPION and (g.model_name, g.model_version) != (state.model_name, state.model_version):
                # A new champion: its answers are judged against a reference of its own.
                if window is not None:
                    await flush()
                    await self._close(conn, state, window, now, result, judged=False)
                    window = None
                state.model_name, state.model_version, state.epoch = g.model_name, g.model_version, state.epoch + 1
            if window is None:
                state.windows += 1
                window = OpenWindow(str(uuid.uuid4()), state.windows, state.model_name or g.model_name,
                                    state.model_version or g.model_version, state.epoch, 0, None, None)
                await store.insert_window(conn, state.application, window, now)
            pending.append(g)
            window.generations += 1
            window.start = g.ts if window.start is None else min(window.start, g.ts)
            window.end = g.ts if window.end is None else max(window.end, g.ts)
            if window.generations >= self.settings.llm_window_size:
                await flush()
                await self._close(conn, state, window, now, result)
                window = None
        if window is not None and pending:
            await flush()
        state.open_window_id = window.window_id if window is not None else None
        await store.save_state(conn, state)

    async def close_overdue(self, conn: AsyncConnection, now: datetime | None = None) -> int:
        """Close windows open longer than `llm_window_seconds` that hold enough generations."""
        now = now or datetime.now(UTC)
        seconds = self.settings.llm_window_seconds
        if seconds <= 0 or not self.settings.llm_scoring:
            return 0
        result = LlmIngestResult()
        for state in await store.lock_overdue_applications(conn, now - timedelta(seconds=seconds)):
            assert state.open_window_id is not None
            window = await store.open_window(conn, state.open_window_id)
            if window is None or window.generations < self.settings.llm_min_window_generations:
                continue
            await self._close(conn, state, window, now, result)
            state.open_window_id = None
            await store.save_state(conn, state)
        return result.windows_closed

    # -- judging a window -----------------------------------------------------------------------

    async def _close(self, conn: AsyncConnection, state: AppState, window: OpenWindow, now: datetime,
                     result: LlmIngestResult, *, judged: bool = True) -> None:
        """Score a full window; the first windows of a champion become its reference, later ones are judged
        against it, and a drop past a threshold alerts (unless the application is cooling down)."""
        application = state.application
        rows = await store.window_rows(conn, window.window_id, self.sources)
        scores = aggregate([(r["groundedness"], r["refused"], bool(r["pii_kinds"]), r["negative"]) for r in rows])
        result.windows_closed += 1
        metrics.LLM_WINDOWS_CLOSED.labels(application).inc()
        for metric, value in scores.as_dict().items():
            metrics.LLM_SCORE.labels(application, metric).set(value)
        if not judged:  # the champion changed mid-window: its answers mix two versions
            await store.close_window(conn, window.window_id, scores=scores.as_dict(), reference=None, checks=None,
                                     is_reference=False, degraded=None, now=now)
            return
        reference = self._baseline(application)
        if reference is None:
            earlier = await store.reference_scores(conn, application, window.epoch)
            if len(earlier) < self.settings.llm_reference_windows:
                await store.close_window(conn, window.window_id, scores=scores.as_dict(), reference=None,
                                         checks=None, is_reference=True, degraded=None, now=now)
                return
            reference = pooled([WindowScores.from_dict(d) for d in earlier])
        assert reference is not None
        decision = judge(scores, reference, self.thresholds)
        await store.close_window(conn, window.window_id, scores=scores.as_dict(), reference=reference.as_dict(),
                                 checks=[asdict(c) for c in decision.checks], is_reference=False,
                                 degraded=decision.drifted, now=now)
        if not decision.drifted:
            return
        last = await store.last_alert_at(conn, application)
        if last is not None and now < last + timedelta(seconds=self.settings.llm_cooldown_seconds):
            log.info("LLM quality dropped; cooling down", extra={"application": application,
                                                                  "window_id": window.window_id})
            return
        await self._alert(conn, state, window, scores, reference, decision, now)
        result.alerts += 1

    def _baseline(self, application: str) -> WindowScores | None:
        b = self.settings.llm_baseline.get(application)
        if b is None:
            return None
        # A configured baseline counts as well measured.
        return WindowScores(0, self.settings.llm_min_scored, b.groundedness, b.refusal_rate, b.pii_leak_rate,
                            b.negative_feedback_rate, 0)

    async def _alert(self, conn: AsyncConnection, state: AppState, window: OpenWindow, scores: WindowScores,
                     reference: WindowScores, decision: QualityDecision, now: datetime) -> None:
        """drift.detected + retrain.requests + review samples, in the caller's transaction."""
        application, model = state.application, common_pb2.ModelRef(name=window.model_name,
                                                                      version=window.model_version)
        drift_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"flywheel-monitor/llm-drift/{window.window_id}"))
        performance = {k: v for k, v in scores.as_dict().items()}
        performance.update({f"reference_{k}": v for k, v in reference.as_dict().items() if k in METRICS})
        degraded = decision.degraded
        critical = len(degraded) >= 2 or any(c.metric == "pii_leak_rate" for c in degraded)
        event = monitoring_pb2.DriftDetected(
            drift_id=drift_id, model=model, window_id=window.window_id,
            features=[monitoring_pb2.FeatureDrift(feature=c.metric, method=c.method, score=c.score,
                                                  threshold=c.threshold, drifted=c.degraded)
                      for c in decision.checks],
            drifted_share=len(degraded) / len(decision.checks), performance=performance,
            # Label-free scores of the answers (and the feedback rate), not measured against labels.
            performance_estimated=True,
            severity=monitoring_pb2.DRIFT_SEVERITY_CRITICAL if critical else monitoring_pb2.DRIFT_SEVERITY_WARNING,
            report_uri=f"monitor://llm-windows/{window.window_id}")
        if window.start is not None and window.end is not None:
            event.window_start.FromDatetime(window.start)
            event.window_end.FromDatetime(window.end)
        event.detected_at.FromDatetime(now)
        await enqueue(conn, Event(DRIFT_DETECTED, model.name, event, SOURCE, id=drift_id, time=now))

        # The fine-tuner keys runs by application (model_name) and takes only LoRA settings as parameters
        # (any other key dead-letters the request), so the request carries none.
        request = models_pb2.RetrainRequested(
            request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"flywheel-monitor/llm-retrain/{window.window_id}")),
            model_name=application, kind=KINDS[self.settings.llm_retrain_kind],
            reason=models_pb2.RETRAIN_REASON_PERFORMANCE, parent=model, drift_event_id=drift_id)
        if window.start is not None:
            request.window_start.FromDatetime(window.start)
        request.window_end.FromDatetime(now)
        await enqueue(conn, Event(RETRAIN_REQUESTS, application, request, SOURCE, id=request.request_id, time=now))

        reviews = await self._reviews(conn, application, window, drift_id, decision, now)
        await store.record_alert(conn, drift_id=drift_id, application=application, window_id=window.window_id,
                                 now=now, event=event.SerializeToString(), retrain_request_id=request.request_id,
                                 reviews=reviews)
        metrics.ALERTS.labels(model.name).inc()
        metrics.LLM_ALERTS.labels(application).inc()
        metrics.RETRAIN_REQUESTS.labels(application).inc()
        log.warning("LLM quality drift detected", extra={
            "application": application, "model": model.name, "version": model.version, "drift_id": drift_id,
            "window_id": window.window_id, "why": "; ".join(decision.reasons)})

    async def _reviews(self, conn: AsyncConnection, application: str, window: OpenWindow, drift_id: str,
                       decision: QualityDecision, now: datetime) -> int:
        """The window's worst answers (PII first, then negative feedback, least grounded, refusals) to review."""
        n = self.settings.llm_review_samples
        if n <= 0:
            return 0
        rows = await store.window_rows(conn, window.window_id, self.sources, exchanges=True)
        flagged = [r for r in rows if r["pii_kinds"] or r["negative"] or r["refused"]
                   or (r["groundedness"] is not None and r["groundedness"] < 1.0)]
        flagged.sort(key=lambda r: review_order(r["groundedness"], r["refused"], bool(r["pii_kinds"]),
                                                bool(r["negative"])))
        why = ", ".join(decision.reasons)
        for r in flagged[:n]:
            exchange = predictions_pb2.LlmExchange.FromString(bytes(r["exchange"]))
            # Queued under the application (as the guard's escalations): reviewers see one queue per app.
            review = reviews_pb2.ReviewRequested(
                review_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"flywheel-monitor/llm-review/{r['request_id']}")),
                request_id=r["request_id"], model=common_pb2.ModelRef(name=application),
                reason=reviews_pb2.REVIEW_REASON_DRIFT_SAMPLE, priority=3 if r["pii_kinds"] else 2, llm=exchange,
                context={"application": application, "window_id": window.window_id, "drift_id": drift_id,
                         "quality_drop": why, "groundedness": "" if r["groundedness"] is None
                         else f"{r['groundedness']:.3f}", "refused": "yes" if r["refused"] else "no",
                         "pii": r["pii_kinds"], "negative_feedback": "yes" if r["negative"] else "no"})
            if exchange.HasField("prompt_template"):
                review.prompt.CopyFrom(exchange.prompt_template)
            review.requested_at.FromDatetime(now)
            review.event_time.FromDatetime(r["ts"])
            await enqueue(conn, Event(REVIEWS_REQUESTED, r["request_id"], review, SOURCE, id=review.review_id,
                                      time=now))
            metrics.REVIEWS.labels(r["model_name"], "drift_sample").inc()
        return min(n, len(flagged))

    # -- feedback ---------------------------------------------------------------------------------

    async def feedback(self, conn: AsyncConnection, events: list[Event], now: datetime | None = None) -> int:
        """Store what feedback says about answers (negative or not), keyed by feedback id."""
        if not self.settings.llm_scoring:
            return 0
        now = now or datetime.now(UTC)
        rows: dict[str, tuple[str, str, bool, int, bool]] = {}
        for event in events:
            fb = event.payload
            assert isinstance(fb, predictions_pb2.FeedbackReceived)
            if not fb.request_id or int(fb.source) not in self.sources:
                continue
            kind = fb.label.WhichOneof("value")
            negative = feedback_negative(
                flag=fb.label.flag if kind == "flag" else None, number=fb.label.number if kind == "number" else None,
                text=fb.label.text if kind == "text" else None, corrected=fb.corrected_completion,
                negative_texts=self.settings.llm_negative_feedback_texts,
                positive_texts=self.settings.llm_positive_feedback_texts)
            if negative is None:
                continue
            answer_only = bool(fb.corrected_completion.strip()) or (
                kind == "text" and fb.label.text.strip().lower() in ANSWER_ONLY_TEXTS)
            feedback_id = fb.feedback_id or event.id
            rows.setdefault(feedback_id, (feedback_id, fb.request_id, negative, int(fb.source), answer_only))
        if not rows:
            return 0
        stored = await store.insert_feedback(conn, list(rows.values()), now)
        metrics.LLM_FEEDBACK.inc(stored)
        return stored
