"""Building the instruction datasets from the review topics, and keeping the champion's logged answers
(predictions.logged) for distillation, inside the consumer's transactions.

An answer under review (reviews.requested with an LLM exchange) and its decision (reviews.completed) come
on two topics, in either order; both are stored redacted, and once both are there the decision becomes an
example (a correction's target is the reviewer's answer, an approval's the original answer), a duplicate
of one (same conversation + same target) or nothing (a rejection). After each batch, an application whose
new corrections reach the threshold gets a run (reason REVIEWS), unless one is queued or running.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from prometheus_client import Counter
from psycopg import AsyncConnection

from flywheel.finetuner import dataset
from flywheel.finetuner.hyperparams import LoraSettings
from flywheel.finetuner.store import DUPLICATE, EXAMPLE, REJECTED, UNUSABLE, FinetunerStore, Run
from flywheel.proto.events.v1 import models_pb2, predictions_pb2, reviews_pb2

log = logging.getLogger(__name__)

SOURCE = "flywheel/finetuner"
DECISIONS = Counter("flywheel_finetuner_decisions_total", "Reviewer decisions, by what became of them.", ["outcome"])
ITEMS = Counter("flywheel_finetuner_review_items_total", "reviews.requested events, by whether they carry an answer.",
                ["outcome"])
REDACTIONS = Counter("flywheel_finetuner_redactions_total", "PII replaced before storing, by kind.", ["kind"])
TEACHER_ANSWERS = Counter("flywheel_finetuner_teacher_answers_total",
                          "predictions.logged events, by whether they were kept as a teacher's answer.", ["outcome"])
THRESHOLD_RUNS = Counter("flywheel_finetuner_threshold_runs_total", "Runs started by the correction threshold.")


class Intake:
    """reviews.requested + reviews.completed -> examples, and the correction threshold."""

    def __init__(self, store: FinetunerStore, *, threshold: int, defaults: LoraSettings, code_version: str,
                 wake: Callable[[], None], teacher_answers: int = 0) -> None:
        self.store = store
        self.teacher_answers = teacher_answers
        self.threshold = threshold
        self.defaults = defaults
        self.code_version = code_version
        self.wake = wake

    async def add_requested(self, conn: AsyncConnection, requests: list[reviews_pb2.ReviewRequested]) -> int:
        items = []
        for request in requests:
            item = dataset.review_item(request)
            ITEMS.labels("answer" if item else "not_llm").inc()
            if item is not None and item.review_id:
                items.append(item)
                for kind, n in item.redactions.items():
                    REDACTIONS.labels(kind).inc(n)
        if not items:
            return 0
        await self.store.lock_reviews(conn, [i.review_id for i in items])
        await self.store.add_items(conn, items)
        return await self._join(conn, [i.review_id for i in items])

    async def add_completed(self, conn: AsyncConnection, completed: list[tuple[reviews_pb2.ReviewCompleted, datetime]],
                            ) -> int:
        decisions = []
        for message, received_at in completed:
            if not message.review_id:
                DECISIONS.labels("no_review_id").inc()
                continue
            if message.decision == reviews_pb2.REVIEW_DECISION_CORRECTED and not message.corrected_completion.strip():
                DECISIONS.labels("not_llm").inc()  # a predictive label that disagreed with the model
                continue
            made = dataset.decision(message, received_at)
            decisions.append(made)
            for kind, n in made.redactions.items():
                REDACTIONS.labels(kind).inc(n)
        if not decisions:
            return 0
        await self.store.lock_reviews(conn, [d.review_id for d in decisions])
        await self.store.add_decisions(conn, decisions)
        return await self._join(conn, [d.review_id for d in decisions])

    async def add_logged(self, conn: AsyncConnection,
                         logged: list[tuple[predictions_pb2.PredictionLogged, datetime]]) -> int:
        """Keep the champion's answers of LLM applications (distillation's data); everything else on
        predictions.logged (predictive models, other arms, refusals, blocked answers) is skipped."""
        if self.teacher_answers <= 0:
            return 0
        answers = []
        for message, received_at in logged:
            answer = dataset.teacher_answer(message, received_at)
            if answer is None:
                TEACHER_ANSWERS.labels("skipped").inc()
                continue
            answers.append(answer)
            for kind, n in answer.redactions.items():
                REDACTIONS.labels(kind).inc(n)
        new = await self.store.add_teacher_answers(conn, answers, self.teacher_answers)
        TEACHER_ANSWERS.labels("kept").inc(new)
        TEACHER_ANSWERS.labels("duplicate").inc(len(answers) - new)
        return new

    async def _join(self, conn: AsyncConnection, review_ids: list[str]) -> int:
        """Turn the decisions of these reviews whose answer is known into examples; returns how many are new."""
        new = 0
        touched: set[str] = set()
        for item, made in await self.store.ready_to_join(conn, review_ids):
            row = dataset.example_row(item, made)
            if row is None:
                outcome = REJECTED if made.decision == reviews_pb2.REVIEW_DECISION_REJECTED else UNUSABLE
                await self.store.set_outcome(conn, item.review_id, outcome, item.application)
            else:
                example_id, inserted = await self.store.add_example(conn, row)
                outcome = EXAMPLE if inserted else DUPLICATE
                await self.store.set_outcome(conn, item.review_id, outcome, item.application, example_id)
                new += inserted
                if inserted and row.kind == dataset.CORRECTION:
                    touched.add(item.application)
            DECISIONS.labels(outcome).inc()
        for application in sorted(touched):
            await self.maybe_trigger(conn, application)
        return new

    async def maybe_trigger(self, conn: AsyncConnection, application: str) -> Run | None:
        """Queue a run of `application` when its new corrections reach the threshold and none is active."""
        if self.threshold <= 0 or await self.store.active_run(conn, application):
            return None
        count = await self.store.new_corrections(conn, application)
        if count < self.threshold:
            return None
        run, coalesced = await self.store.create_or_join(conn, Run(
            id=uuid.uuid4().hex, application=application, status=0, settings=self.defaults.to_strings(),
            reason=models_pb2.RETRAIN_REASON_REVIEWS, requested_by=f"{SOURCE} ({count} new corrections)",
            code_version=self.code_version))
        if not coalesced:
            THRESHOLD_RUNS.inc()
            log.info("correction threshold reached: run queued", extra={
                "application": application, "corrections": count, "threshold": self.threshold, "run_id": run.id})
        self.wake()  # the scheduler also hears the NOTIFY when the transaction commits
        return run
