"""Topic consumer of the review app: reviews.requested fills the queues (a batch per transaction; the runner
records the event ids in the same transaction, the items' unique keys drop repeats of one prediction)."""

from __future__ import annotations

from psycopg import AsyncConnection

from flywheel.common.events import Event
from flywheel.common.kafka import BatchHandler
from flywheel.common.topics import REVIEWS_REQUESTED, Topic
from flywheel.review.queues import ReviewQueues


def batch_handlers(queues: ReviewQueues) -> dict[Topic, BatchHandler]:
    async def on_requested(events: list[Event], conn: AsyncConnection) -> None:
        await queues.intake(conn, events)

    return {REVIEWS_REQUESTED: on_requested}
