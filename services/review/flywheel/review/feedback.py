"""What a final decision tells the rest of the loop, as events: `feedback.received` (a label with source
reviewer, joined like a chargeback: the row's entity keys and event time, so the trainer and the
evaluator can use it and the monitor measures with it) and `reviews.completed` (the whole decision, with
a corrected answer for the fine-tuner).

Event ids and the feedback id are derived from the decision id, so the events of one decision are the
same events however often they are built.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from flywheel.common.events import Event
from flywheel.common.topics import FEEDBACK_RECEIVED, REVIEWS_COMPLETED
from flywheel.proto.events.v1 import common_pb2, predictions_pb2, reviews_pb2
from flywheel.review.store import Decision, Item

SOURCE = "flywheel/review"
DECISIONS = {
    "approve": reviews_pb2.REVIEW_DECISION_APPROVED,
    "correct": reviews_pb2.REVIEW_DECISION_CORRECTED,
    "reject": reviews_pb2.REVIEW_DECISION_REJECTED,
}


def label_message(label: dict) -> common_pb2.Label:
    if "flag" in label:
        return common_pb2.Label(flag=bool(label["flag"]))
    if "number" in label:
        return common_pb2.Label(number=float(label["number"]))
    return common_pb2.Label(text=str(label.get("text", "")))


def decision_kind(item: Item, decision: Decision) -> int:
    """APPROVED / CORRECTED / REJECTED. A predictive label approves the model's prediction when it agrees
    with it and corrects it otherwise."""
    if decision.action != "label":
        return DECISIONS[decision.action]
    predicted = (item.content.get("prediction") or {}).get("label")
    if predicted is None or "flag" not in decision.label:
        return reviews_pb2.REVIEW_DECISION_UNSPECIFIED
    same = bool(predicted) == bool(decision.label["flag"])
    return reviews_pb2.REVIEW_DECISION_APPROVED if same else reviews_pb2.REVIEW_DECISION_CORRECTED


def event_ids(decision_id: str) -> list[str]:
    """The ids of a decision's events (feedback.received, reviews.completed), known before they are built."""
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"flywheel-review/{topic}/{decision_id}"))
            for topic in (FEEDBACK_RECEIVED.name, REVIEWS_COMPLETED.name)]


def decision_events(item: Item, decision: Decision, reviewers: Sequence[str], decided_at: datetime) -> list[Event]:
    """feedback.received and reviews.completed for the final decision of an item. `reviewers`: who made it
    (one reviewer; both, when two agreed; the lead who resolved a conflict)."""
    model = common_pb2.ModelRef(name=item.model_name, version=item.model_version)
    label = label_message(decision.label)
    who = ",".join(reviewers)
    feedback = predictions_pb2.FeedbackReceived(
        feedback_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"flywheel-review/feedback/{decision.id}")),
        request_id=item.request_id, entity_id=item.entity_id, model=model,
        source=predictions_pb2.FEEDBACK_SOURCE_REVIEWER, label=label,
        corrected_completion=decision.corrected_completion, comment=decision.comment or f"review by {who}",
        entity_keys=item.entity_keys)
    feedback.observed_at.FromDatetime(decided_at)
    feedback.event_time.FromDatetime(item.event_time)
    completed = reviews_pb2.ReviewCompleted(
        review_id=item.review_id, request_id=item.request_id, model=model, reviewer=who,
        decision=decision_kind(item, decision), label=label, corrected_completion=decision.corrected_completion,
        comment=decision.comment)  # type: ignore[arg-type]
    completed.completed_at.FromDatetime(decided_at)
    feedback_id, completed_id = event_ids(decision.id)
    return [Event(FEEDBACK_RECEIVED, item.request_id, feedback, SOURCE, id=feedback_id),
            Event(REVIEWS_COMPLETED, item.request_id, completed, SOURCE, id=completed_id)]
