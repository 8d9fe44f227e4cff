"""The retriever's use cases, free of any transport: the gRPC servicer comes through here.

Collections belong to a tenant; every read and write below is scoped by (tenant, collection). Ingestion
validates and extracts every document first (one bad document fails the call, naming it, and stores
nothing), then stores the documents and queues their documents.ingested events in one transaction
(outbox). Retrieval embeds a text query with the collection's active model version, ranks by vector
(HNSW, or exactly when the scope is small) and by full text, and fuses the two by reciprocal rank.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import posixpath
import time
from collections.abc import Sequence

import numpy as np
from prometheus_client import Counter, Histogram

from flywheel.common.clients.ports import TextEmbedder
from flywheel.common.errors import FailedPrecondition, InvalidArgument, NotFound
from flywheel.retriever.domain import (
    DEFAULT_K,
    DEFAULT_RRF_K,
    MAX_DOCUMENT_ID,
    MAX_K,
    Collection,
    Document,
    Filter,
    Hit,
    IngestOutcome,
    NewDocument,
    Query,
    RawDocument,
    Retrieved,
    collection_name,
    document_id_ok,
    tenant_name,
)
from flywheel.retriever.extract import ExtractionError, extract
from flywheel.retriever.indexing import Indexer, enqueue_document
from flywheel.retriever.store import RetrieverDatabase, RetrieverStore, SearchPlan

INGESTED = Counter("flywheel_retriever_ingested_total", "Documents received by IngestDocuments, by outcome.",
                   ["outcome"])
RETRIEVALS = Counter("flywheel_retriever_retrievals_total", "Retrieve calls, by vector path.", ["path"])
RETRIEVE_SECONDS = Histogram("flywheel_retriever_retrieve_seconds", "Time to answer Retrieve (embedding included).",
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))

MAX_QUERY_CHARS = 10_000
# How long Retrieve trusts a collection it read (its active version is checked by every search anyway).
COLLECTION_CACHE_SECONDS = 2.0
MAX_TAGS = 64
MAX_LABEL = 128
MAX_METADATA = 64
MAX_METADATA_VALUE = 4096


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{name} must be a finite number >= 0, got {value}")
    return value


def plan_query(*, tenant: str, collection: str, text: str = "", vector: Sequence[float] | None = None, k: int = 0,
               filter: Filter | None = None, weights: tuple[float, float] | None = None, rrf_k: int = 0,
               text_for_keywords: str = "") -> Query:
    """A validated query with its defaults: k 5 (at most 100), rrf_k 60, weights vector 1 and text 1 when there
    is text to match (the query's, or text_for_keywords with a vector), else vector only."""
    tenant = tenant_name(tenant)
    collection = collection_name(collection)
    if not text and vector is None:
        raise InvalidArgument("the query is empty: give text or a vector")
    if len(text) > MAX_QUERY_CHARS or len(text_for_keywords) > MAX_QUERY_CHARS:
        raise InvalidArgument(f"the query text is longer than {MAX_QUERY_CHARS} characters")
    if k < 0 or k > MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K} (0 = {DEFAULT_K}), got {k}")
    if rrf_k < 0:
        raise InvalidArgument(f"rrf_k must be positive (0 = {DEFAULT_RRF_K}), got {rrf_k}")
    values: np.ndarray | None = None
    if vector is not None:
        values = np.asarray(vector, dtype=np.float32)
        if values.ndim != 1 or not values.size:
            raise InvalidArgument("the query vector is empty")
        if not np.isfinite(values).all():
            raise InvalidArgument("the query vector holds NaN or infinite values")
        if not values.any():
            raise InvalidArgument("the query vector is all zeros (it has no direction to compare by cosine)")
    keywords = text_for_keywords.strip() or text.strip()
    if weights is None:
        vector_weight, text_weight = 1.0, (1.0 if keywords else 0.0)
    else:
        vector_weight, text_weight = _finite("weights.vector", weights[0]), _finite("weights.text", weights[1])
        if vector_weight == 0 and text_weight == 0:
            raise InvalidArgument("weights.vector and weights.text are both 0: nothing would rank the chunks")
        if text_weight > 0 and not keywords:
            raise InvalidArgument("weights.text > 0 needs text to match: a text query, or text_for_keywords")
    return Query(tenant=tenant, collection=collection, text=text, vector=values, keywords=keywords,
                 k=k or DEFAULT_K, filter=filter or Filter(), vector_weight=vector_weight, text_weight=text_weight,
                 rrf_k=rrf_k or DEFAULT_RRF_K)


def derived_id(source: str, sha: str) -> str:
    """A document's id when the caller gives none: its source (a path or URL), else its content hash."""
    if source and len(source) <= MAX_DOCUMENT_ID and not any(ord(c) < 32 for c in source):
        return source
    return f"sha256-{sha[:32]}"


def _label(raw: RawDocument, position: int) -> str:
    """How an error names a document: its id or source, else its position in the request."""
    return repr(raw.document_id or raw.source) if raw.document_id or raw.source else f"#{position + 1}"


def _labels(name: str, values: Sequence[str], what: str, max_count: int) -> list[str]:
    out: list[str] = []
    for v in values:
        v = v.strip()
        if not v or len(v) > MAX_LABEL:
            raise InvalidArgument(f"{what}: {name} {v[:40]!r} must be 1-{MAX_LABEL} characters")
        if v not in out:
            out.append(v)
    if len(out) > max_count:
        raise InvalidArgument(f"{what}: at most {max_count} {name}s, got {len(out)}")
    return out


def prepare(raw: RawDocument, position: int, *, max_document_bytes: int, max_text_bytes: int) -> NewDocument:
    """Validate one input document and extract its text; InvalidArgument naming the document otherwise."""
    what = f"document {_label(raw, position)}"
    if len(raw.content) > max_document_bytes:
        raise InvalidArgument(f"{what} is {len(raw.content)} bytes, over the {max_document_bytes}-byte limit "
                              "(max_document_bytes)")
    if raw.document_id:
        try:
            document_id_ok(raw.document_id)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{what}: {exc}") from None
    try:
        extracted = extract(raw.content, raw.mime_type, raw.source)
    except ExtractionError as exc:
        raise InvalidArgument(f"{what} {exc}") from None
    size = len(extracted.text.encode())
    if size > max_text_bytes:
        raise InvalidArgument(f"{what}: its text is {size} bytes, over the {max_text_bytes}-byte limit "
                              "(max_text_bytes; split the document)")
    if len(raw.doc_type) > MAX_LABEL:
        raise InvalidArgument(f"{what}: doc_type is longer than {MAX_LABEL} characters")
    tags = _labels("tag", raw.tags, what, MAX_TAGS)
    if len(raw.metadata) > MAX_METADATA or any(len(k) > MAX_LABEL or len(v) > MAX_METADATA_VALUE
                                               for k, v in raw.metadata.items()):
        raise InvalidArgument(f"{what}: metadata holds at most {MAX_METADATA} entries, keys of at most {MAX_LABEL} "
                              f"and values of at most {MAX_METADATA_VALUE} characters")
    sha = hashlib.sha256(extracted.text.encode()).hexdigest()
    title = raw.title.strip() or extracted.title
    if not title and raw.source:
        title = posixpath.splitext(posixpath.basename(raw.source.rstrip("/").replace("\\", "/")))[0]
    return NewDocument(document_id=raw.document_id or derived_id(raw.source, sha), title=title[:1000],
                       source=raw.source, mime_type=extracted.mime_type, text=extracted.text, content_sha256=sha,
                       doc_type=raw.doc_type.strip(), tags=tags, document_date=raw.document_date,
                       metadata=dict(raw.metadata))


class Retriever:
    def __init__(self, db: RetrieverDatabase, store: RetrieverStore, indexer: Indexer, embedder: TextEmbedder, *,
                 embedding_model: str, max_document_bytes: int, max_text_bytes: int,
                 max_documents_per_request: int = 100, candidates: int = 50,
                 exact_search_max_rows: int = 3_000) -> None:
        self.db = db
        self.store = store
        self.indexer = indexer
        self.embedder = embedder
        self.embedding_model = embedding_model
        self.max_document_bytes = max_document_bytes
        self.max_text_bytes = max_text_bytes
        self.max_documents_per_request = max_documents_per_request
        self.candidates = candidates
        self.exact_search_max_rows = exact_search_max_rows
        # (tenant, collection) -> (when read, the collection), for retrieval only.
        self._collections: dict[tuple[str, str], tuple[float, Collection]] = {}

    # -- collections ---------------------------------------------------------------------------------

    async def create_collection(self, tenant: str, name: str, description: str = "") -> tuple[Collection, bool]:
        if len(description) > 4096:
            raise InvalidArgument("description is longer than 4096 characters")
        return await self.store.create_collection(tenant_name(tenant), collection_name(name), description,
                                                  self.embedding_model)

    async def list_collections(self, tenant: str) -> list[Collection]:
        return await self.store.list_collections(tenant_name(tenant) if tenant else "")

    async def collection(self, tenant: str, name: str) -> Collection:
        tenant, name = tenant_name(tenant), collection_name(name)
        coll = await self.store.read_collection(tenant, name)
        if coll is None:
            raise NotFound(f"no collection {name!r} for tenant {tenant!r}")
        return coll

    # -- documents -----------------------------------------------------------------------------------

    async def ingest(self, tenant: str, collection: str, raws: Sequence[RawDocument]) -> list[IngestOutcome]:
        """Store new and changed documents and queue them for embedding (one transaction: documents and their
        documents.ingested events); unchanged texts are left alone (their metadata updated in place)."""
        tenant, collection = tenant_name(tenant), collection_name(collection)
        if not raws:
            raise InvalidArgument("no documents to ingest")
        if len(raws) > self.max_documents_per_request:
            raise InvalidArgument(f"{len(raws)} documents in one call; at most {self.max_documents_per_request}")
        # Extraction (a PDF parser in Python) runs off the event loop, so other calls keep being answered.
        docs = await asyncio.to_thread(lambda: [
            prepare(raw, i, max_document_bytes=self.max_document_bytes, max_text_bytes=self.max_text_bytes)
            for i, raw in enumerate(raws)])
        seen: dict[str, int] = {}
        for i, doc in enumerate(docs):
            if doc.document_id in seen:
                raise InvalidArgument(f"documents #{seen[doc.document_id] + 1} and #{i + 1} have the same id "
                                      f"{doc.document_id!r}")
            seen[doc.document_id] = i
        outcomes: dict[str, IngestOutcome] = {}
        async with self.db.connection() as conn:
            coll = await self.store.collection(conn, tenant, collection, lock="share")
            if coll is None:
                raise NotFound(f"no collection {collection!r} for tenant {tenant!r}")
            for doc in sorted(docs, key=lambda d: d.document_id):  # one lock order: concurrent calls never deadlock
                existing = await self.store.lock_document(conn, coll.id, doc.document_id)
                if existing is not None and not existing.deleted and existing.content_sha256 == doc.content_sha256:
                    await self.store.update_metadata(conn, existing, doc)
                    outcomes[doc.document_id] = IngestOutcome(doc.document_id, False, existing.revision,
                                                              existing.content_sha256, existing.characters)
                    continue
                revision = existing.revision + 1 if existing is not None else 1
                stored = await self.store.put_document(conn, coll, doc, revision)
                try:
                    await enqueue_document(conn, coll, stored)
                except InvalidArgument as exc:
                    raise InvalidArgument(f"document {doc.document_id!r} is too large to queue: {exc}") from None
                outcomes[doc.document_id] = IngestOutcome(doc.document_id, True, revision, doc.content_sha256,
                                                          len(doc.text))
        results = [outcomes[doc.document_id] for doc in docs]
        for r in results:
            INGESTED.labels("accepted" if r.accepted else "unchanged").inc()
        return results

    async def get_document(self, tenant: str, collection: str, document_id: str,
                           include_chunks: bool = False) -> tuple[Document, list[Hit]]:
        coll = await self.collection(tenant, collection)
        document_id_ok(document_id)
        doc = await self.store.get_document(coll.tenant, coll.id, document_id)
        if doc is None:
            raise NotFound(f"no document {document_id!r} in collection {coll.name!r} of tenant {coll.tenant!r}")
        chunks: list[Hit] = []
        if include_chunks and coll.active_version is not None:
            chunks = await self.store.document_chunks(coll.tenant, coll.id, coll.active_version, document_id)
        return doc, chunks

    async def list_documents(self, tenant: str, collection: str, page_size: int = 0, page_token: str = "",
                             include_text: bool = False) -> tuple[list[Document], str]:
        coll = await self.collection(tenant, collection)
        return await self.store.list_documents(coll.tenant, coll.id, page_size, page_token, include_text)

    async def delete_document(self, tenant: str, collection: str, document_id: str) -> tuple[bool, int]:
        """Tombstone a document at a new revision and remove its chunks in the same transaction. Returns
        (whether it existed, the revision of the deletion or of the existing tombstone)."""
        tenant, collection = tenant_name(tenant), collection_name(collection)
        document_id_ok(document_id)
        async with self.db.connection() as conn:
            coll = await self.store.collection(conn, tenant, collection, lock="update")
            if coll is None:
                raise NotFound(f"no collection {collection!r} for tenant {tenant!r}")
            doc = await self.store.lock_document(conn, coll.id, document_id)
            if doc is None or doc.deleted:
                return False, doc.revision if doc else 0
            removed = await self.store.delete_document_chunks(conn, coll.id, document_id)
            await self.store.add_chunk_counts(
                conn, coll.id, active=-removed.get(coll.active_version or -1, 0),
                pending=-removed.get(coll.pending_version or -1, 0))
            revision = await self.store.tombstone(conn, doc)
            # The re-index may have been waiting for this very document.
            await self.indexer.maybe_switch(conn, coll)
        return True, revision

    # -- retrieval -----------------------------------------------------------------------------------

    async def retrieve(self, query: Query) -> Retrieved:
        """The best chunks of the collection's active version. A vector query takes the collection from a
        short-lived cache (one round trip less): the search statement reports the active version it saw, and an
        answer from a version that is no longer active (a switch happened) is asked again with the fresh
        collection. A text query reads it fresh: it is embedded with the version that is active now (the
        embedding costs far more than that read)."""
        started = time.perf_counter()
        coll = await self._collection_for_query(query.tenant, query.collection, fresh=query.vector is None)
        try:
            result = await self._retrieve(coll, query)
            stale = result.current_version != coll.active_version
        except InvalidArgument:
            stale = True  # e.g. a vector of the new version's dimensions, checked against a cached old one
            result = None
        if stale or (result is not None and len(result.hits) < query.k):
            fresh = await self._collection_for_query(query.tenant, query.collection, fresh=True)
            if result is None or (fresh.active_version, fresh.dimensions) != (coll.active_version, coll.dimensions):
                result = await self._retrieve(fresh, query)
        assert result is not None
        RETRIEVALS.labels(result.path or "none").inc()
        RETRIEVE_SECONDS.observe(time.perf_counter() - started)
        return result

    async def _collection_for_query(self, tenant: str, name: str, *, fresh: bool = False) -> Collection:
        key = (tenant, name)
        now = time.monotonic()
        cached = self._collections.get(key)
        if cached is not None and not fresh and now - cached[0] < COLLECTION_CACHE_SECONDS:
            return cached[1]
        coll = await self.collection(tenant, name)
        if len(self._collections) > 10_000:
            self._collections.clear()
        self._collections[key] = (now, coll)
        return coll

    async def _retrieve(self, coll: Collection, query: Query) -> Retrieved:
        version, dims = coll.active_version, coll.dimensions
        empty = Retrieved([], coll.embedding_model, version or 0, current_version=version)
        vector: Sequence[float] | None = query.vector
        if vector is not None and dims is not None and len(vector) != dims:
            raise InvalidArgument(
                f"the query vector has {len(vector)} dimensions, but collection {coll.name!r} is indexed with "
                f"{coll.embedding_model} v{version}: {dims} dimensions")
        if version is None or dims is None:
            return empty  # nothing indexed yet
        if vector is None and query.vector_weight > 0:
            embedded = await self.embedder.embed([query.text], model_name=coll.embedding_model, model_version=version)
            if embedded.model_version != version or len(embedded.vectors) != 1:
                raise FailedPrecondition(
                    f"the embedder answered with {embedded.model_name} v{embedded.model_version}, not the version "
                    f"collection {coll.name!r} is indexed with ({coll.embedding_model} v{version})")
            vector = embedded.vectors[0]
            if len(vector) != dims:
                raise FailedPrecondition(f"the embedder's {coll.embedding_model} v{version} gives {len(vector)} "
                                         f"dimensions; collection {coll.name!r} holds {dims}")
        vector_weight = query.vector_weight if vector is not None else 0.0
        path = self._vector_path(query.filter, coll) if vector is not None and vector_weight > 0 else ""
        plan = SearchPlan(collection_id=coll.id, tenant=coll.tenant, model_version=version, dims=dims, k=query.k,
                          candidates=max(self.candidates, query.k), vector=vector, keywords=query.keywords,
                          vector_weight=vector_weight, text_weight=query.text_weight, rrf_k=query.rrf_k,
                          filter=query.filter, path=path or "hnsw", exact_max_rows=self.exact_search_max_rows)
        async with self.db.read() as conn:
            found = await self.store.search(conn, plan)
        if path == "auto":
            scope_rows = found.scope_rows
            path = "exact" if scope_rows is not None and scope_rows <= self.exact_search_max_rows else "hnsw"
        return Retrieved(found.hits, coll.embedding_model, version, path or "text",
                         current_version=found.active_version if found.hits else version)

    def _vector_path(self, scope_filter: Filter, coll: Collection) -> str:
        """Exact search when the query's scope holds at most `exact_search_max_rows` chunks, else HNSW with
        iterative scans. Unfiltered, the collection's chunk count decides; filtered, the statement counts
        the scope itself ("auto")."""
        limit = self.exact_search_max_rows
        if limit <= 0:
            return "hnsw"
        if scope_filter.empty:
            return "exact" if coll.active_chunks <= limit else "hnsw"
        return "auto"
