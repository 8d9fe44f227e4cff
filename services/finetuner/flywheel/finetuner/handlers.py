"""Topic consumers of the fine-tuner: reviews.requested (answers under review) and reviews.completed
(reviewers' decisions) build its datasets; predictions.logged gives the champion's answers distillation learns
from; retrain.requests for LLM applications queue runs."""

from __future__ import annotations

from psycopg import AsyncConnection

from flywheel.common.events import Event
from flywheel.common.kafka import BatchHandler, Handler
from flywheel.common.topics import PREDICTIONS_LOGGED, RETRAIN_REQUESTS, REVIEWS_COMPLETED, REVIEWS_REQUESTED, Topic
from flywheel.finetuner.finetuner import Finetuner
from flywheel.proto.events.v1 import models_pb2, predictions_pb2, reviews_pb2


def handlers(finetuner: Finetuner) -> dict[Topic, Handler]:
    async def on_retrain_requested(event: Event, conn: AsyncConnection) -> None:
        assert isinstance(event.payload, models_pb2.RetrainRequested)
        await finetuner.request_retrain(conn, event.id, event.payload, event.source)

    return {RETRAIN_REQUESTS: on_retrain_requested}


def batch_handlers(finetuner: Finetuner) -> dict[Topic, BatchHandler]:
    async def on_requested(events: list[Event], conn: AsyncConnection) -> None:
        requests = []
        for event in events:
            assert isinstance(event.payload, reviews_pb2.ReviewRequested)
            requests.append(event.payload)
        await finetuner.add_review_requests(conn, requests)

    async def on_completed(events: list[Event], conn: AsyncConnection) -> None:
        completed = []
        for event in events:
            assert isinstance(event.payload, reviews_pb2.ReviewCompleted)
            completed.append((event.payload, event.time))
        await finetuner.add_review_decisions(conn, completed)

    async def on_logged(events: list[Event], conn: AsyncConnection) -> None:
        logged = []
        for event in events:
            assert isinstance(event.payload, predictions_pb2.PredictionLogged)
            logged.append((event.payload, event.time))
        await finetuner.add_logged(conn, logged)

    handlers: dict[Topic, BatchHandler] = {REVIEWS_REQUESTED: on_requested, REVIEWS_COMPLETED: on_completed}
    if finetuner.intake.teacher_answers > 0:
        handlers[PREDICTIONS_LOGGED] = on_logged
    return handlers
