"""Topic consumers of the guard: models.promoted -> swap in a new detectors champion."""

from __future__ import annotations

from psycopg import AsyncConnection

from flywheel.common.events import Event
from flywheel.common.kafka import Handler
from flywheel.common.topics import MODELS_PROMOTED, Topic
from flywheel.guard.catalog import DetectorCatalog
from flywheel.proto.events.v1 import models_pb2


def promotion_handlers(catalog: DetectorCatalog) -> dict[Topic, Handler]:
    async def on_promoted(event: Event, conn: AsyncConnection) -> None:
        assert isinstance(event.payload, models_pb2.ModelPromoted)
        catalog.on_promoted(event.payload.model_name, event.payload.alias)

    return {MODELS_PROMOTED: on_promoted}
