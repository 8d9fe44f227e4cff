"""Topic consumers of the evaluator: models.registered queues an evaluation, feedback.received
fills its own labels table, reviews.requested + reviews.completed its reviewed LLM answers (a service
never reads another's tables)."""

from __future__ import annotations

from psycopg import AsyncConnection

from flywheel.common.events import Event
from flywheel.common.kafka import BatchHandler, Handler
from flywheel.common.topics import FEEDBACK_RECEIVED, MODELS_REGISTERED, REVIEWS_COMPLETED, REVIEWS_REQUESTED, Topic
from flywheel.evaluator.evaluator import Evaluator
from flywheel.proto.events.v1 import models_pb2, predictions_pb2, reviews_pb2


def handlers(evaluator: Evaluator) -> dict[Topic, Handler]:
    async def on_registered(event: Event, conn: AsyncConnection) -> None:
        assert isinstance(event.payload, models_pb2.ModelRegistered)
        await evaluator.on_registered(conn, event.id, event.payload, event.source)

    return {MODELS_REGISTERED: on_registered}


def batch_handlers(evaluator: Evaluator) -> dict[Topic, BatchHandler]:
    async def on_feedback(events: list[Event], conn: AsyncConnection) -> None:
        feedback = []
        for event in events:
            assert isinstance(event.payload, predictions_pb2.FeedbackReceived)
            feedback.append((event.payload, event.time))
        await evaluator.add_labels(conn, feedback)

    out: dict[Topic, BatchHandler] = {FEEDBACK_RECEIVED: on_feedback}
    llm = evaluator.llm
    if llm is None:
        return out

    async def on_review_requested(events: list[Event], conn: AsyncConnection) -> None:
        requests = []
        for event in events:
            assert isinstance(event.payload, reviews_pb2.ReviewRequested)
            requests.append(event.payload)
        await llm.add_review_requests(conn, requests)

    async def on_review_completed(events: list[Event], conn: AsyncConnection) -> None:
        completed = []
        for event in events:
            assert isinstance(event.payload, reviews_pb2.ReviewCompleted)
            completed.append((event.payload, event.time))
        await llm.add_review_decisions(conn, completed)

    return {**out, REVIEWS_REQUESTED: on_review_requested, REVIEWS_COMPLETED: on_review_completed}
