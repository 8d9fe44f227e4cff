"""Topic consumers of the trainer: feedback.received fills its labels table (the trainer
owns the labels it trains on), retrain.requests queues runs."""

from __future__ import annotations

from psycopg import AsyncConnection

from flywheel.common.events import Event
from flywheel.common.kafka import BatchHandler, Handler
from flywheel.common.topics import FEEDBACK_RECEIVED, RETRAIN_REQUESTS, Topic
from flywheel.proto.events.v1 import models_pb2, predictions_pb2
from flywheel.trainer.trainer import Trainer


def handlers(trainer: Trainer) -> dict[Topic, Handler]:
    async def on_retrain_requested(event: Event, conn: AsyncConnection) -> None:
        assert isinstance(event.payload, models_pb2.RetrainRequested)
        await trainer.request_retrain(conn, event.id, event.payload, event.source)

    return {RETRAIN_REQUESTS: on_retrain_requested}


def batch_handlers(trainer: Trainer) -> dict[Topic, BatchHandler]:
    async def on_feedback(events: list[Event], conn: AsyncConnection) -> None:
        feedback = []
        for event in events:
            assert isinstance(event.payload, predictions_pb2.FeedbackReceived)
            feedback.append((event.payload, event.time))
        await trainer.add_labels(conn, feedback)

    return {FEEDBACK_RECEIVED: on_feedback}
