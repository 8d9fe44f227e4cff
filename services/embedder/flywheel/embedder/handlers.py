"""Topic consumers of the embedder: documents.ingested -> documents.embedded, and models.promoted ->
hot swap of the default model's champion.

documents.ingested is consumed a fetched batch at a time: the batch's documents are chunked and
embedded concurrently (their chunks share forward passes), their DocumentEmbedded events published and
acknowledged, and only then does the runner record the input events as processed and commit the
offsets (see `emitter` for why this is direct publishing, not the outbox). A poison document fails the
batch; the runner then retries event by event and dead-letters just that one.
"""

from __future__ import annotations

import asyncio

from psycopg import AsyncConnection

from flywheel.common.events import Event
from flywheel.common.kafka import BatchHandler, Handler
from flywheel.common.topics import DOCUMENTS_EMBEDDED, DOCUMENTS_INGESTED, MODELS_PROMOTED, Topic
from flywheel.embedder.catalog import ModelCatalog
from flywheel.embedder.documents import DocumentEmbedder, output_event_id
from flywheel.embedder.emitter import DirectPublisher
from flywheel.proto.events.v1 import documents_pb2, models_pb2

SOURCE = "embedder"


def document_handlers(documents: DocumentEmbedder, publisher: DirectPublisher) -> dict[Topic, BatchHandler]:
    async def on_ingested(events: list[Event], conn: AsyncConnection) -> None:
        for event in events:
            assert isinstance(event.payload, documents_pb2.DocumentIngested)
        results = await asyncio.gather(*(documents.embed(e.payload) for e in events),  # type: ignore[arg-type]
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        await publisher.send([
            Event(DOCUMENTS_EMBEDDED, key=result.document_id, payload=result, source=SOURCE,
                  id=output_event_id(event.id, result.embedding_model), traceparent=event.traceparent)
            for event, result in zip(events, results, strict=True)])

    return {DOCUMENTS_INGESTED: on_ingested}


def promotion_handlers(catalog: ModelCatalog) -> dict[Topic, Handler]:
    async def on_promoted(event: Event, conn: AsyncConnection) -> None:
        assert isinstance(event.payload, models_pb2.ModelPromoted)
        catalog.on_promoted(event.payload.model_name, event.payload.alias, int(event.payload.version))

    return {MODELS_PROMOTED: on_promoted}
