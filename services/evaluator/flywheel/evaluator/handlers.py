"""Topic consumers of the evaluator: models.registered queues an evaluation, feedback.received
fills its own labels table (a service never reads another's tables)."""

from __future__ import annotations

from psycopg import AsyncConnection

from flywheel.common.events import Event
from flywheel.common.kafka import BatchHandler, Handler
from flywheel.common.topics import FEEDBACK_RECEIVED, MODELS_REGISTERED, Topic
from flywheel.evaluator.evaluator import Evaluator
from flywheel.proto.events.v1 import models_pb2, predictions_pb2


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

    return {FEEDBACK_RECEIVED: on_feedback}
