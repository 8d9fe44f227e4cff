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
from datetime import UTC, datetime

from flywheel.common.redaction import redact
from flywheel.proto.events.v1 import reviews_pb2

CORRECTION, APPROVAL = "correction", "approval"
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


def review_item(request: reviews_pb2.ReviewRequested) -> ReviewItem | None:
    """The redacted answer under review, or None when the request is not about an LLM answer."""
    if not request.HasField("llm") or not (request.llm.completion or request.llm.messages):
        return None
    llm = request.llm
    application = llm.application or request.model.name
    if not application:
        return None  # no dataset it could belong to
    counts: Counter[str] = Counter()
    messages = [(m.role, _redacted(m.content, counts)) for m in llm.messages if m.role != "assistant" or m.content]
    # The exchange's messages end with the user's turn; an assistant turn at the end is the answer itself.
    if messages and messages[-1][0] == "assistant" and messages[-1][1] == _redacted(llm.completion, Counter()):
        messages.pop()
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
