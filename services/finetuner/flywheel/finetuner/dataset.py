"""The instruction dataset's rules, free of any transport or database: what a reviewed answer becomes
(a correction's target is the reviewer's answer, an approval's the original one, a rejection gives none),
PII redaction before anything is kept, the dedup key (same conversation + same target = one example),
the split by time and the snapshot's content hash.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from flywheel.common.redaction import redact
from flywheel.proto.events.v1 import predictions_pb2, reviews_pb2

CORRECTION, APPROVAL, TEACHER = "correction", "approval", "teacher"
TRAIN, EVAL = "train", "eval"


@dataclass
class ReviewItem:
    """An answer under review (reviews.requested with an LLM exchange), redacted."""

    review_id: str
    request_id: str
    application: str
    model_name: str
    model_version: int
    messages: list[tuple[str, str]]
    prompt: str
    completion: str
    redactions: Counter[str] = field(default_factory=Counter)


@dataclass
class Decision:
    """A reviewer's decision (reviews.completed), redacted."""

    review_id: str
    request_id: str
    decision: int
    corrected: str
    reviewer: str
    completed_at: datetime
    redactions: Counter[str] = field(default_factory=Counter)


@dataclass
class ExampleRow:
    """One (conversation, target) example of an application's dataset."""

    application: str
    key: str
    kind: str
    messages: list[tuple[str, str]]
    prompt: str
    target: str
    review_id: str
    model_name: str
    model_version: int
    decided_at: datetime


def _redacted(text: str, counts: Counter[str]) -> str:
    result = redact(text)
    counts.update(result.counts)
    return result.text


def _conversation(llm: predictions_pb2.LlmExchange, counts: Counter[str]) -> list[tuple[str, str]]:
    """The exchange's messages, redacted, up to the user's turn (an assistant turn at the end that repeats the
    completion is the answer itself)."""
    messages = [(m.role, _redacted(m.content, counts)) for m in llm.messages if m.role != "assistant" or m.content]
    if messages and messages[-1][0] == "assistant" and messages[-1][1] == _redacted(llm.completion, Counter()):
        messages.pop()
    return messages


def review_item(request: reviews_pb2.ReviewRequested) -> ReviewItem | None:
    """The redacted answer under review, or None when the request is not about an LLM answer."""
    if not request.HasField("llm") or not (request.llm.completion or request.llm.messages):
        return None
    llm = request.llm
    application = llm.application or request.model.name
    if not application:
        return None  # no dataset it could belong to
    counts: Counter[str] = Counter()
    messages = _conversation(llm, counts)
    return ReviewItem(
        review_id=request.review_id, request_id=request.request_id,
        application=application, model_name=request.model.name,
        model_version=request.model.version, messages=messages, prompt=_redacted(llm.prompt, counts),
        completion=_redacted(llm.completion, counts), redactions=counts)


def decision(completed: reviews_pb2.ReviewCompleted, received_at: datetime) -> Decision:
    counts: Counter[str] = Counter()
    when = completed.completed_at.ToDatetime(UTC) if completed.HasField("completed_at") \
        else received_at
    return Decision(review_id=completed.review_id, request_id=completed.request_id, decision=int(completed.decision),
                    corrected=_redacted(completed.corrected_completion.strip(), counts), reviewer=completed.reviewer,
                    completed_at=when, redactions=counts)


def target_of(item: ReviewItem, made: Decision) -> tuple[str, str] | None:
    """(kind, target) of a decision on an item; None when it gives nothing to learn (a rejection, a
    correction without text, an approval of an empty answer)."""
    if made.decision == reviews_pb2.REVIEW_DECISION_CORRECTED and made.corrected:
        return CORRECTION, made.corrected
    if made.decision == reviews_pb2.REVIEW_DECISION_APPROVED and item.completion.strip():
        return APPROVAL, item.completion
    return None


def example_key(messages: Sequence[tuple[str, str]], prompt: str, target: str) -> str:
    """The dedup key: the conversation (or rendered prompt when there is none) and the target, whitespace-
    normalized."""
    def norm(text: str) -> str:
        return " ".join(text.split())

    payload = {"messages": [[r, norm(c)] for r, c in messages], "prompt": "" if messages else norm(prompt),
               "target": norm(target)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def example_row(item: ReviewItem, made: Decision) -> ExampleRow | None:
    found = target_of(item, made)
    if found is None or not (item.messages or item.prompt.strip()):
        return None
    kind, target = found
    return ExampleRow(application=item.application, key=example_key(item.messages, item.prompt, target), kind=kind,
                      messages=item.messages, prompt=item.prompt, target=target, review_id=item.review_id,
                      model_name=item.model_name, model_version=item.model_version, decided_at=made.completed_at)


def split_by_time(ids_in_time_order: Sequence[int], eval_fraction: float) -> dict[int, str]:
    """The latest `eval_fraction` of the examples (at least one when there are two or more and the fraction
    is positive) are the eval split; the rest train. Input: example ids oldest first."""
    n = len(ids_in_time_order)
    n_eval = 0
    if eval_fraction > 0 and n >= 2:
        n_eval = min(n - 1, max(1, math.floor(n * eval_fraction)))
    return {example_id: EVAL if i >= n - n_eval else TRAIN for i, example_id in enumerate(ids_in_time_order)}


def snapshot_id(application: str, keyed_splits: Sequence[tuple[str, str]]) -> str:
    """Content hash of a snapshot: the application and each example's (dedup key, split), in order."""
    digest = hashlib.sha256(f"flywheel.finetuner/snapshot/v1\n{application}\n".encode())
    for key, split in keyed_splits:
        digest.update(f"{key} {split}\n".encode())
    return digest.hexdigest()


# -- distillation: the champion's logged answers ------------------------------------------------------------

# Finish reasons of answers the model ended by itself: not `refusal` (the application's template refused),
# `content_filter` (the guard blocked), `length` (cut), `cancelled` or `error`.
TEACHER_FINISH = ("stop", "")


@dataclass
class TeacherAnswer:
    """One answer the champion gave to live traffic (predictions.logged), redacted."""

    application: str
    request_id: str
    model_name: str
    model_version: int
    messages: list[tuple[str, str]]
    prompt: str
    completion: str
    question_key: str
    logged_at: datetime
    redactions: Counter[str] = field(default_factory=Counter)


def teacher_answer(logged: predictions_pb2.PredictionLogged, received_at: datetime) -> TeacherAnswer | None:
    """The champion's answer a logged generation holds, or None: not an application's LLM exchange, not the
    champion arm (challenger, shadow and evaluation traffic are not the teacher's), a refusal / blocked / cut /
    failed answer, a response-cache hit (a repeat of an answer logged before), or nothing to learn from."""
    if logged.arm != predictions_pb2.PREDICTION_ARM_CHAMPION or not logged.HasField("llm"):
        return None
    llm = logged.llm
    if not llm.application or llm.cache_hit or llm.finish_reason not in TEACHER_FINISH or not llm.completion.strip():
        return None
    if not logged.request_id:
        return None
    counts: Counter[str] = Counter()
    messages = _conversation(llm, counts)
    prompt = _redacted(llm.prompt, counts)
    if not (messages or prompt.strip()):
        return None
    when = logged.timestamp.ToDatetime(UTC) if logged.HasField("timestamp") else received_at
    return TeacherAnswer(
        application=llm.application, request_id=logged.request_id, model_name=logged.model.name,
        model_version=logged.model.version, messages=messages, prompt=prompt,
        completion=_redacted(llm.completion.strip(), counts), question_key=example_key(messages, prompt, ""),
        logged_at=when, redactions=counts)


@dataclass
class DistillItem:
    """One example of a distillation run: a teacher's answer, or a reviewed answer (which overrides the teacher's
    for the same question)."""

    source: str  # teacher, correction or approval
    ref: str  # request id (teacher) or review id
    messages: list[tuple[str, str]]
    prompt: str
    target: str
    at: datetime  # logged (teacher) or decided (review)

    @property
    def key(self) -> str:
        return example_key(self.messages, self.prompt, self.target)


def distill_items(teacher: Sequence[DistillItem], reviewed: Sequence[DistillItem]) -> list[DistillItem]:
    """One item per question (conversation): the newest reviewed answer if a reviewer decided one, else the
    teacher's newest answer; oldest first."""
    chosen: dict[str, DistillItem] = {}
    for item in sorted(teacher, key=lambda i: (i.at, i.ref)):
        chosen[example_key(item.messages, item.prompt, "")] = item
    for item in sorted(reviewed, key=lambda i: (i.at, i.ref)):
        chosen[example_key(item.messages, item.prompt, "")] = item
    return sorted(chosen.values(), key=lambda i: (i.at, i.source, i.ref))


def eval_start(timed_splits: Sequence[tuple[datetime, str]]) -> datetime | None:
    """The time from which nothing was trained on: the first eval item's time, or just after the last trained
    one when that is later (a tie) or there is no eval split. None without items."""
    train = [at for at, split in timed_splits if split == TRAIN]
    evaluation = [at for at, split in timed_splits if split == EVAL]
    after_train = max(train) + timedelta(microseconds=1) if train else None
    first_eval = min(evaluation) if evaluation else None
    candidates = [t for t in (after_train, first_eval) if t is not None]
    return max(candidates) if candidates else None
