"""Topic consumers of the registry: evaluations.completed drives automatic promotion."""

from __future__ import annotations

from psycopg import AsyncConnection

from flywheel.common.events import Event
from flywheel.common.kafka import Handler
from flywheel.common.topics import EVALUATIONS_COMPLETED, Topic
from flywheel.proto.events.v1 import models_pb2
from flywheel.registry.registry import Registry


def handlers(registry: Registry) -> dict[Topic, Handler]:
    async def on_evaluation_completed(event: Event, conn: AsyncConnection) -> None:
        assert isinstance(event.payload, models_pb2.EvaluationCompleted)
        await registry.apply_evaluation(conn, event.payload)

    return {EVALUATIONS_COMPLETED: on_evaluation_completed}
