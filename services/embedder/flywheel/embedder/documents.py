"""The documents use case: a DocumentIngested becomes a DocumentEmbedded (chunks with vectors).

The version embedded with is the event's `embed_with` (the retriever's choice: a collection's active
version, or a new champion it is reindexing into), or the default model's champion when unset. A
document that can never be embedded (no id, no text, a `text_uri` instead of text, an unknown or
unservable model version, a result larger than one Kafka message) raises `PoisonEvent`: the consumer
dead-letters it and goes on. A registry that does not answer is `Unavailable`: retried, not poison.

The result is one message: its size is checked (with placeholder vectors: a float takes 4 bytes
whatever its value) after chunking and before embedding, against the broker's message size limit
(FLYWHEEL_KAFKA_MAX_MESSAGE_BYTES). With all-MiniLM-L6-v2 (384 floats per chunk) and 200-token
chunks, a chunk takes ~2.5 KB, so a document of up to ~350 chunks (~300 KB of text) fits in 1 MB.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from prometheus_client import Counter, Histogram

from flywheel.common.errors import FailedPrecondition, InvalidArgument, NotFound, PoisonEvent
from flywheel.embedder.catalog import ModelCatalog, ServedVersion
from flywheel.embedder.chunking import chunk_document
from flywheel.embedder.embedding import embed_with
from flywheel.proto.events.v1 import common_pb2, documents_pb2

DOCUMENTS = Counter("flywheel_embedder_documents_total", "Documents handled.", ["outcome"])
CHUNKS = Histogram("flywheel_embedder_document_chunks", "Chunks per embedded document.",
                   buckets=(1, 2, 5, 10, 20, 50, 100, 200, 400, 800))
# Room kept for the record key and the CloudEvents headers next to the payload.
HEADROOM_BYTES = 2048
# Output event ids: the same input event embedded with the same version gives the same id, so a
# redelivery's duplicate is dropped by id downstream (and its chunk ids are equal anyway).
EVENT_NAMESPACE = uuid.UUID("3b0d2c9e-6f0a-4b8e-9a55-2f1f5a9c1e7d")


def output_event_id(input_event_id: str, model: common_pb2.ModelRef) -> str:
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{input_event_id}/{model.name}/{model.version}"))


class DocumentEmbedder:
    def __init__(self, catalog: ModelCatalog, *, chunk_tokens: int, chunk_overlap: int,
                 max_message_bytes: int) -> None:
        self.catalog = catalog
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.max_message_bytes = max_message_bytes

    async def embed(self, document: documents_pb2.DocumentIngested) -> documents_pb2.DocumentEmbedded:
        """Chunk and embed one document (see the module doc for what is poison)."""
        try:
            result = await self._embed(document)
        except PoisonEvent:
            DOCUMENTS.labels("poison").inc()
            raise
        DOCUMENTS.labels("embedded").inc()
        CHUNKS.observe(len(result.chunks))
        return result

    async def _embed(self, document: documents_pb2.DocumentIngested) -> documents_pb2.DocumentEmbedded:
        doc_id = document.document_id
        if not doc_id:
            raise PoisonEvent("document_id is empty")
        if not document.text.strip():
            if document.text_uri:
                raise PoisonEvent(f"document {doc_id}: text_uri ({document.text_uri}) is not read by the "
                                  "embedder; send the extracted text inline in `text`")
            raise PoisonEvent(f"document {doc_id} has no text")
        served = await self._version(document)
        size = min(self.chunk_tokens, served.model.max_content_tokens)
        overlap = min(self.chunk_overlap, size // 2)
        chunks = await asyncio.to_thread(chunk_document, doc_id, document.text, document.mime_type,
                                         served.model.token_spans, chunk_tokens=size, overlap=overlap)
        if not chunks:
            raise PoisonEvent(f"document {doc_id} has no text to embed")
        message = self._message(document, served)
        dims = served.model.dimensions
        for chunk in chunks:
            message.chunks.add(chunk_id=chunk.chunk_id, index=chunk.index, text=chunk.text,
                               start_offset=chunk.start, end_offset=chunk.end, vector=[0.0] * dims,
                               token_count=chunk.token_count, section=chunk.section)
        limit = self.max_message_bytes - HEADROOM_BYTES
        if message.ByteSize() > limit:
            raise PoisonEvent(
                f"document {doc_id} makes {len(chunks)} chunks, a documents.embedded message of "
                f"{message.ByteSize()} bytes, over the {limit}-byte limit (FLYWHEEL_KAFKA_MAX_MESSAGE_BYTES "
                f"{self.max_message_bytes} minus {HEADROOM_BYTES} for key and headers): split the document, or "
                "raise the brokers' message.max.bytes and that setting together")
        embedded = await embed_with(served, [c.text for c in chunks], normalize=None, background=True)
        for out, vector in zip(message.chunks, embedded.vectors, strict=True):
            del out.vector[:]
            out.vector.extend(vector.tolist())
        message.normalized = embedded.normalized
        return message

    async def _version(self, document: documents_pb2.DocumentIngested) -> ServedVersion:
        ref = document.embed_with
        try:
            return await self.catalog.get(ref.name, int(ref.version))
        except (NotFound, FailedPrecondition, InvalidArgument) as exc:
            raise PoisonEvent(f"document {document.document_id}: cannot embed with "
                              f"{ref.name or self.catalog.default_model} version {ref.version or 'champion'}: "
                              f"{exc}") from exc

    @staticmethod
    def _message(document: documents_pb2.DocumentIngested, served: ServedVersion) -> documents_pb2.DocumentEmbedded:
        message = documents_pb2.DocumentEmbedded(
            document_id=document.document_id, collection=document.collection, title=document.title,
            embedding_model=common_pb2.ModelRef(name=served.name, version=served.version),
            dimensions=served.model.dimensions, metadata=dict(document.metadata), tenant=document.tenant,
            source=document.source, revision=document.revision, content_sha256=document.content_sha256,
            doc_type=document.doc_type, tags=list(document.tags), normalized=served.model.normalizes)
        message.embedded_at.FromDatetime(datetime.now(UTC))
        if document.HasField("document_date"):
            message.document_date.CopyFrom(document.document_date)
        return message
