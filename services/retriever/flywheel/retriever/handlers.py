"""Topic consumers of the retriever: documents.embedded stores a document's chunks of one model version;
models.promoted re-indexes the collections whose embedding model got a new champion."""

from __future__ import annotations

from psycopg import AsyncConnection

from flywheel.common.events import Event
from flywheel.common.kafka import BatchHandler, Handler
from flywheel.common.topics import DOCUMENTS_EMBEDDED, MODELS_PROMOTED, Topic
from flywheel.proto.events.v1 import documents_pb2, models_pb2
from flywheel.retriever.indexing import Indexer


def handlers(indexer: Indexer) -> dict[Topic, Handler]:
    async def on_promoted(event: Event, conn: AsyncConnection) -> None:
        assert isinstance(event.payload, models_pb2.ModelPromoted)
        if await indexer.on_promoted(conn, event.payload):
            indexer.wake()  # this replica's re-indexer; others hear the NOTIFY at commit

    return {MODELS_PROMOTED: on_promoted}


def batch_handlers(indexer: Indexer) -> dict[Topic, BatchHandler]:
    async def on_embedded(events: list[Event], conn: AsyncConnection) -> None:
        # In offset order, one transaction per fetched batch; a poison event fails the batch, which the runner
        # then applies event by event, so only that one goes to documents.embedded.dlq.
        for event in events:
            assert isinstance(event.payload, documents_pb2.DocumentEmbedded)
            await indexer.on_embedded(conn, event.payload)

    return {DOCUMENTS_EMBEDDED: on_embedded}
