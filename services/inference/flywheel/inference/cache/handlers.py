"""The response cache's reaction to `models.promoted`: a new champion of a model, adapter or prompt template
evicts the entries made with its other versions (they could no longer match: the keys hold the versions;
eviction frees their room at once instead of at their TTL)."""

from __future__ import annotations

from psycopg import AsyncConnection

from flywheel.common.events import Event
from flywheel.common.kafka import Handler
from flywheel.common.topics import MODELS_PROMOTED, Topic
from flywheel.inference.cache.service import ResponseCache
from flywheel.proto.events.v1 import models_pb2


def with_cache_invalidation(handlers: dict[Topic, Handler], cache: ResponseCache) -> dict[Topic, Handler]:
    """`handlers` with the models.promoted one (if any) followed by the cache's eviction."""
    inner = handlers.get(MODELS_PROMOTED)

    async def on_model_promoted(event: Event, conn: AsyncConnection) -> None:
        if inner is not None:
            await inner(event, conn)
        assert isinstance(event.payload, models_pb2.ModelPromoted)
        if event.payload.alias == "champion":  # what requests are served by (0 = no champion any more)
            await cache.invalidate(event.payload.model_name, event.payload.version)

    return {**handlers, MODELS_PROMOTED: on_model_promoted}
