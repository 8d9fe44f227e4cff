"""Keeping the index: documents.embedded -> a document's chunks of one generation replaced at once;
models.promoted (champion of a collection's embedding model moved) -> re-index into the new version
in the background, then switch; and the events that ask the embedder for vectors.

An index generation is one embedding model version of one collection. A collection has an active
generation (what queries use) and, while a re-index runs, a pending one. Every change happens in the
transaction of the event that caused it (the consumer's), with the collection's row locked, so a
switch and the events that feed it never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter
from psycopg import AsyncConnection, sql

from flywheel.common.errors import PoisonEvent
from flywheel.common.events import Event
from flywheel.common.outbox import enqueue
from flywheel.common.tasks import within
from flywheel.common.topics import DOCUMENTS_INGESTED
from flywheel.proto.events.v1 import common_pb2, documents_pb2, models_pb2
from flywheel.retriever.domain import DEFAULT_TENANT, MAX_DIMENSIONS, ChunkIn, Collection, Document
from flywheel.retriever.store import RetrieverDatabase, RetrieverStore

log = logging.getLogger(__name__)

SOURCE = "flywheel/retriever"
CHAMPION = "champion"

EMBEDDED = Counter("flywheel_retriever_embedded_total", "documents.embedded events, by what became of them.",
                   ["outcome"])
PROMOTED = Counter("flywheel_retriever_promoted_total", "models.promoted events about collections' embedding "
                                                       "models, by what they caused.", ["outcome"])
REQUEUED = Counter("flywheel_retriever_reindex_events_total",
                   "documents.ingested events queued to re-index collections into a new model version.")
SWITCHES = Counter("flywheel_retriever_generation_switches_total",
                   "Collections switched to a newly indexed embedding model version.")


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def document_event(coll: Collection, doc: Document, version: int) -> Event:
    """The documents.ingested event asking the embedder for `doc`'s chunks with `version` of the collection's
    model (0 = its champion: nothing is indexed yet)."""
    payload = documents_pb2.DocumentIngested(
        document_id=doc.document_id, collection=coll.name, title=doc.title, text=doc.text, mime_type=doc.mime_type,
        content_sha256=doc.content_sha256, metadata=doc.metadata, tenant=coll.tenant, source=doc.source,
        revision=doc.revision, doc_type=doc.doc_type, tags=doc.tags,
        embed_with=common_pb2.ModelRef(name=coll.embedding_model, version=version))
    payload.ingested_at.FromDatetime(doc.ingested_at or datetime.now(UTC))
    if doc.document_date is not None:
        payload.document_date.FromDatetime(doc.document_date)
    return Event(DOCUMENTS_INGESTED, doc.document_id, payload, SOURCE)


def versions_to_embed(coll: Collection) -> list[int]:
    """The versions a new or changed document is embedded with: the active one (0 = the model's champion
    when nothing is indexed yet) and, during a re-index, the pending one too."""
    versions = [coll.active_version or 0]
    if coll.pending_version is not None and coll.pending_version != coll.active_version:
        versions.append(coll.pending_version)
    return versions


async def enqueue_document(conn: AsyncConnection, coll: Collection, doc: Document,
                           versions: list[int] | None = None) -> None:
    for version in versions if versions is not None else versions_to_embed(coll):
        await enqueue(conn, document_event(coll, doc, version))


def chunks_of(event: documents_pb2.DocumentEmbedded) -> list[ChunkIn]:
    return [ChunkIn(chunk_id=c.chunk_id or f"{event.document_id}#{c.index}", index=c.index, text=c.text,
                    start_offset=c.start_offset, end_offset=c.end_offset, section=c.section,
                    token_count=c.token_count, vector=list(c.vector)) for c in event.chunks]


def check_dimensions(event: documents_pb2.DocumentEmbedded, coll: Collection, version: int) -> int:
    """The event's dimension count, checked against its chunks and against the generation's (if known)."""
    what = f"documents.embedded of {event.document_id!r} in {coll.ref} ({coll.embedding_model} v{version})"
    dims = event.dimensions or (len(event.chunks[0].vector) if event.chunks else 0)
    if event.chunks and not 0 < dims <= MAX_DIMENSIONS:
        raise PoisonEvent(f"{what}: {dims} dimensions; the index takes 1 to {MAX_DIMENSIONS}")
    for chunk in event.chunks:
        if len(chunk.vector) != dims:
            raise PoisonEvent(f"{what}: chunk {chunk.index} has {len(chunk.vector)} values, the event says "
                              f"{dims} dimensions")
    expected = coll.generation_dimensions(version)
    if event.chunks and expected is not None and dims != expected:
        raise PoisonEvent(f"{what}: {dims}-dimensional vectors, but that model version's index holds {expected} "
                          "dimensions")
    return dims


class Indexer:
    def __init__(self, db: RetrieverDatabase, store: RetrieverStore, *, reindex_batch: int = 200,
                 poll_interval: float = 2.0) -> None:
        self.db = db
        self.store = store
        self.reindex_batch = reindex_batch
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    @property
    def channel(self) -> str:
        """The NOTIFY channel that wakes the re-indexers of this schema."""
        return f"flywheel_reindex_{self.db.schema}"[:63]

    # -- documents.embedded --------------------------------------------------------------------------

    async def on_embedded(self, conn: AsyncConnection, event: documents_pb2.DocumentEmbedded) -> str:
        """Store a document's chunks of one model version, replacing that generation's previous chunks of the
        document, unless the event is stale (an older revision, a deleted document, a replaced generation).
        Returns what happened (also counted)."""
        outcome = await self._embedded(conn, event)
        EMBEDDED.labels(outcome).inc()
        return outcome

    async def _embedded(self, conn: AsyncConnection, event: documents_pb2.DocumentEmbedded) -> str:
        tenant = event.tenant or DEFAULT_TENANT
        coll = await self.store.collection(conn, tenant, event.collection, lock="update")
        if coll is None:
            return "unknown_collection"  # another deployment's, or never created here: nothing to index into
        model, version = event.embedding_model.name, event.embedding_model.version
        if model and model != coll.embedding_model:
            raise PoisonEvent(f"documents.embedded of {event.document_id!r}: collection {coll.ref} is indexed with "
                              f"{coll.embedding_model!r}, not {model!r}")
        if version <= 0:
            raise PoisonEvent(f"documents.embedded of {event.document_id!r} names no model version")
        doc = await self.store.lock_document(conn, coll.id, event.document_id)
        if doc is None:
            return "unknown_document"
        if doc.deleted:
            return "deleted"
        if event.revision < doc.revision:
            return "stale_revision"
        if event.revision > doc.revision:
            raise PoisonEvent(f"documents.embedded of {event.document_id!r} in {coll.ref} is at revision "
                              f"{event.revision}, but the document is at revision {doc.revision}")
        if event.content_sha256 and event.content_sha256 != doc.content_sha256:
            raise PoisonEvent(f"documents.embedded of {event.document_id!r} in {coll.ref}: content_sha256 "
                              f"{event.content_sha256} is not the stored text's ({doc.content_sha256}) at revision "
                              f"{doc.revision}")
        if coll.active_version is None:
            # The first vectors of a collection decide its generation.
            await self.store.set_generation(conn, coll.id, active_version=version)
            coll.active_version = version
        if version not in (coll.active_version, coll.pending_version):
            if version < coll.active_version:
                return "stale_version"
            # Embedded with a version nobody asked for (the champion moved while it waited, before this
            # collection was bound): ask again with the collection's own versions, unless already indexed.
            if doc.active_revision != doc.revision:
                await enqueue_document(conn, coll, doc)
                return "requeued"
            return "other_version"
        dims = check_dimensions(event, coll, version)
        active = version == coll.active_version
        if event.chunks:
            if coll.generation_dimensions(version) is None:
                if active:
                    await self.store.set_generation(conn, coll.id, dimensions=dims)
                    coll.dimensions = dims
                else:
                    await self.store.set_generation(conn, coll.id, pending_dimensions=dims)
                    coll.pending_dimensions = dims
            await self.store.ensure_vector_index(conn, dims)
        removed, added = await self.store.replace_chunks(conn, doc, version, dims, chunks_of(event))
        if active:
            await self.store.add_chunk_counts(conn, coll.id, active=added - removed)
        else:
            await self.store.add_chunk_counts(conn, coll.id, pending=added - removed)
        await self.store.mark_indexed(conn, doc, active=active)
        if not active:
            await self.maybe_switch(conn, coll)
        return "indexed" if active else "indexed_pending"

    # -- re-indexing ---------------------------------------------------------------------------------

    async def maybe_switch(self, conn: AsyncConnection, coll: Collection) -> bool:
        """Switch a collection to its pending version once every live document has that version's chunks at
        its current revision (one UPDATE: queries after the commit use the new version), then drop the old
        generation's chunks. `coll` must be locked by the caller's transaction."""
        if coll.pending_version is None or await self.store.pending_left(conn, coll.id):
            return False
        fresh = await self.store.lock_collection_by_id(conn, coll.id)
        await self.store.switch_to_pending(conn, fresh)
        SWITCHES.inc()
        log.info("collection switched to a new embedding model version", extra={
            "collection": coll.ref, "model": coll.embedding_model, "from_version": fresh.active_version,
            "to_version": fresh.pending_version})
        return True

    async def on_promoted(self, conn: AsyncConnection, event: models_pb2.ModelPromoted) -> int:
        """The champion of an embedding model moved: every collection indexed with it and served by another
        version starts re-indexing into the new one (or switches at once when it is empty). Returns how many
        collections it changed."""
        if event.alias != CHAMPION or event.version <= 0:
            return 0
        changed = 0
        for coll in await self.store.collections_of_model(conn, event.model_name):
            outcome = await self._promoted(conn, coll, event.version)
            PROMOTED.labels(outcome).inc()
            changed += outcome != "unchanged"
        if changed:
            await conn.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(self.channel)))
        return changed

    async def _promoted(self, conn: AsyncConnection, coll: Collection, version: int) -> str:
        if coll.active_version is None:
            # Nothing indexed yet: documents in flight are embedded with the champion; bind it now, so vectors
            # of an older champion are asked again instead of becoming the collection's generation.
            await self.store.set_generation(conn, coll.id, active_version=version)
            return "bound"
        if version == coll.active_version:
            if coll.pending_version is not None:  # rolled back before the re-index finished
                await self.store.cancel_pending(conn, coll)
                return "cancelled"
            return "unchanged"
        if version == coll.pending_version:
            return "unchanged"
        live = await self.store.start_pending(conn, coll, version)
        coll.pending_version, coll.pending_dimensions, coll.pending_chunks = version, None, 0
        log.info("re-indexing collection into a new embedding model version", extra={
            "collection": coll.ref, "model": coll.embedding_model, "active_version": coll.active_version,
            "pending_version": version, "documents": live})
        if live == 0:
            await self.maybe_switch(conn, coll)
            return "switched_empty"
        return "reindexing"

    async def reindex_step(self) -> int:
        """Queue documents.ingested (embed_with = the pending version) for the next batch of one re-indexing
        collection's documents, in one transaction with the cursor's move. Returns how many documents it
        went through (0 = nothing to do)."""
        async with self.db.connection() as conn:
            coll = await self.store.claim_reindex(conn)
            if coll is None or coll.pending_version is None:
                return 0
            docs = await self.store.documents_after(conn, coll.id, coll.reindex_cursor or "", self.reindex_batch)
            for doc in docs:
                if doc.pending_revision is None or doc.pending_revision < doc.revision:
                    await enqueue_document(conn, coll, doc, [coll.pending_version])
                    REQUEUED.inc()
            done = len(docs) < self.reindex_batch
            await self.store.set_reindex_cursor(conn, coll.id, None if done else docs[-1].document_id)
            if done:
                log.info("re-index queued", extra={"collection": coll.ref, "pending_version": coll.pending_version})
            return max(len(docs), 1)

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._reindex_loop(), name="retriever-reindex"),
                       asyncio.create_task(self._listen(), name="retriever-reindex-listener")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _reindex_loop(self) -> None:
        backoff = 0.5
        while True:
            try:
                while await self.reindex_step():
                    pass
                backoff = 0.5
                with contextlib.suppress(TimeoutError):
                    await within(self._wake.wait(), self.poll_interval)
                self._wake.clear()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("re-indexer failed; retrying")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _listen(self) -> None:
        """Wake the re-indexer when any replica starts a re-index (NOTIFY at commit)."""
        while True:
            try:
                conn = await AsyncConnection.connect(self.db.url, autocommit=True)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    async for _ in conn.notifies():
                        self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("re-index listener reconnecting", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
