"""The retriever's database: collections, documents (text, revisions, tombstones) and chunks with their
vectors (pgvector HNSW, one partial index per dimension count) and full text (tsvector + GIN), and the
search SQL: a vector ranking (HNSW with iterative scans, or exact over a small scope), a full-text
ranking, fused by reciprocal rank in one statement."""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import AsyncConnection, sql
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.rows import dict_row
from psycopg.types import TypeInfo
from psycopg.types.json import Jsonb

from flywheel.common.db import Database, MruConnectionPool
from flywheel.common.errors import InvalidArgument
from flywheel.retriever.domain import (
    ChunkIn,
    Collection,
    Document,
    Filter,
    Hit,
    NewDocument,
)

# websearch_to_tsquery syntax that needs its AND: "quoted phrases" and -excluded words. A query without them is
# a question in plain words, whose terms are matched with OR (all of them is far too strict for natural language).
WEBSEARCH_OPERATORS = re.compile(r'"|(^|\s)-\w')
MAX_PAGE = 1000
DEFAULT_PAGE = 100
COLLECTION_COLUMNS = sql.SQL(
    "id, tenant, name, description, embedding_model, active_version, dimensions, active_chunks, pending_version,"
    " pending_dimensions, pending_chunks, reindex_cursor, created_at")


def vector_index_name(dims: int) -> str:
    return f"chunks_hnsw_{int(dims)}"


class RetrieverDatabase(Database):
    """The service's pool (transactions) plus a pool of autocommit connections for reads on the hot path
    (a retrieval is one or two statements: no BEGIN/COMMIT round trips). Every connection carries the
    search settings (`hnsw.ef_search`, `hnsw.iterative_scan`, ...) as session defaults."""

    def __init__(self, url: str, schema: str, *, session_settings: dict[str, str], max_size: int = 10) -> None:
        super().__init__(url, schema, min_size=1, max_size=max_size)
        self.session_settings = dict(session_settings)
        self.reads = MruConnectionPool(
            url, min_size=1, max_size=max_size, open=False, configure=self._configure,
            kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 2},
            name=f"flywheel-{schema}-reads")

    async def _configure(self, conn: AsyncConnection) -> None:
        await conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(self.schema)))
        for name, value in self.session_settings.items():
            # Placeholders until pgvector's library loads in the session, which then takes them over.
            await conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        await register_vector(conn)
        if not conn.autocommit:
            await conn.commit()

    async def open(self, migrations: Any = None) -> RetrieverDatabase:
        await super().open(migrations)
        await self.reads.open(wait=True, timeout=30)
        return self

    async def close(self) -> None:
        await self.reads.close()
        await super().close()

    def read(self):
        """`async with db.read() as conn:` an autocommit connection (each statement its own snapshot)."""
        return self.reads.connection()


def page_token(document_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": document_id}).encode()).decode()


def parse_page_token(token: str) -> str | None:
    if not token:
        return None
    try:
        return str(json.loads(base64.urlsafe_b64decode(token.encode()))["after"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"page_token {token!r} is not a token this retriever issued") from exc


class Vector:
    """A pgvector `vector` query parameter. Sent in pgvector's binary format (dimension count, then big-endian
    float4s: ~5 us for 384 dimensions) on connections that know the type's OID, else as text."""

    __slots__ = ("data",)

    def __init__(self, values: Sequence[float] | np.ndarray) -> None:
        self.data = np.asarray(values, dtype=">f4")


class VectorTextDumper(Dumper):
    oid = 0  # unknown: the SQL casts it (`%s::vector`)

    def dump(self, obj: Vector) -> bytes:
        return ("[" + ",".join(map(repr, obj.data.astype(np.float32).tolist())) + "]").encode()


class VectorBinaryDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: Vector) -> bytes:
        return struct.pack(">HH", len(obj.data), 0) + obj.data.tobytes()


psycopg.adapters.register_dumper(Vector, VectorTextDumper)


async def register_vector(conn: AsyncConnection) -> bool:
    """Send `Vector` parameters of `conn` in binary; False (text, the default) when pgvector is not installed
    in the database yet (connections opened before the first migration)."""
    info = await TypeInfo.fetch(conn, "vector")
    if info is None:
        return False
    conn.adapters.register_dumper(Vector, type("VectorDumper", (VectorBinaryDumper,), {"oid": info.oid}))
    return True


def vector_param(values: Sequence[float] | np.ndarray) -> Vector:
    return Vector(values)


@dataclass(frozen=True)
class SearchPlan:
    """One retrieval statement's inputs (everything `search_sql` needs)."""

    collection_id: int
    tenant: str
    model_version: int
    dims: int
    k: int
    candidates: int
    vector: Sequence[float] | None
    keywords: str
    vector_weight: float
    text_weight: float
    rrf_k: int
    filter: Filter
    # "exact" (ORDER BY distance over the scope's rows), "hnsw" (the index, iterative scan), or "auto": the
    # statement counts the scope (up to exact_max_rows + 1) and runs the exact branch when it holds at most
    # exact_max_rows chunks, else the HNSW one (one round trip for filtered queries, whose size is unknown).
    path: str = "hnsw"
    exact_max_rows: int = 0


@dataclass
class Found:
    """A search's hits; how many chunks its scope holds (path "auto": counted up to exact_max_rows + 1); and
    the collection's active version in the statement's snapshot. Both None when nothing was found."""

    hits: list[Hit]
    scope_rows: int | None
    active_version: int | None


def filter_clauses(f: Filter) -> tuple[list[sql.Composable], dict[str, Any]]:
    """SQL conditions on chunk alias `c` (and their parameters) for a metadata filter."""
    parts: list[sql.Composable] = []
    params: dict[str, Any] = {}
    if f.doc_types:
        parts.append(sql.SQL("c.doc_type = ANY(%(f_doc_types)s::text[])"))
        params["f_doc_types"] = list(f.doc_types)
    if f.tags_any:
        parts.append(sql.SQL("c.tags && %(f_tags_any)s::text[]"))
        params["f_tags_any"] = list(f.tags_any)
    if f.tags_all:
        parts.append(sql.SQL("c.tags @> %(f_tags_all)s::text[]"))
        params["f_tags_all"] = list(f.tags_all)
    if f.date_from is not None:
        parts.append(sql.SQL("c.document_date >= %(f_date_from)s"))
        params["f_date_from"] = f.date_from
    if f.date_to is not None:
        parts.append(sql.SQL("c.document_date <= %(f_date_to)s"))
        params["f_date_to"] = f.date_to
    if f.document_ids:
        parts.append(sql.SQL("c.document_id = ANY(%(f_document_ids)s::text[])"))
        params["f_document_ids"] = list(f.document_ids)
    return parts, params


def scope_clause(dims: int, f: Filter) -> tuple[sql.Composable, dict[str, Any]]:
    """Tenant, collection, model version (one generation, never two models mixed) and the filters. The
    dimension count is a literal: it must match the partial HNSW index's predicate in every plan."""
    parts: list[sql.Composable] = [
        sql.SQL("c.tenant = %(tenant)s"), sql.SQL("c.collection_id = %(cid)s"),
        sql.SQL("c.model_version = %(version)s"), sql.SQL("c.dims = {}").format(sql.Literal(int(dims)))]
    extra, params = filter_clauses(f)
    return sql.SQL(" AND ").join(parts + extra), params


def search_sql(plan: SearchPlan) -> tuple[sql.Composable, dict[str, Any]]:
    """The retrieval statement: vector top-N and full-text top-N over the plan's scope, fused by reciprocal
    rank (score = sum of w / (rrf_k + rank)), the best k with their documents' fields.

    Full text: `websearch_to_tsquery` (english), its ANDs relaxed to ORs when the query uses no operators,
    ranked by `ts_rank_cd` (headings weigh more: weight A).

    Vector ranking, path "hnsw": `embedding::vector(D) <=> q` matches the partial HNSW index of D dimensions;
    with `hnsw.iterative_scan` the scan goes on until enough rows pass the scope and filters (relaxed order:
    re-sorted by distance in `vr`). Path "exact": the untyped `embedding <=> q` matches no index, so the
    planner reads the scope's rows through the btree/GIN indexes and sorts them: exact, for small scopes.
    """
    where, params = scope_clause(plan.dims, plan.filter)
    dims = sql.Literal(int(plan.dims))
    params.update(tenant=plan.tenant, cid=plan.collection_id, version=plan.model_version, n=plan.candidates,
                  k=plan.k, rrf=plan.rrf_k, wv=float(plan.vector_weight), wt=float(plan.text_weight))
    ctes: list[sql.Composable] = []
    has_vector = plan.vector is not None and plan.vector_weight > 0
    has_text = bool(plan.keywords) and plan.text_weight > 0
    if plan.vector is not None:
        params["qv"] = vector_param(plan.vector)
    scope_rows: sql.Composable = sql.SQL("NULL::bigint")
    if has_vector:
        exact = sql.SQL("c.embedding <=> %(qv)s::vector")
        approximate = sql.SQL("c.embedding::vector({d}) <=> %(qv)s::vector({d})").format(d=dims)
        ranking = sql.SQL("SELECT c.id, {distance} AS distance FROM chunks c WHERE {where}{gate}"
                          " ORDER BY distance LIMIT %(n)s")
        if plan.path == "auto":
            # The gates are one-time filters (an InitPlan reading `scope`): only one branch scans.
            params.update(cap=plan.exact_max_rows + 1, exact_max=plan.exact_max_rows)
            # Counted on (collection, version, filters) alone: the collection id implies the tenant and the version
            # the dimensions, and without them an index-only scan can count (nothing is returned from here).
            counted = sql.SQL(" AND ").join([sql.SQL("c.collection_id = %(cid)s"),
                                             sql.SQL("c.model_version = %(version)s"),
                                             *filter_clauses(plan.filter)[0]])
            ctes.append(sql.SQL("scope AS MATERIALIZED (SELECT count(*) AS n FROM (SELECT 1 FROM chunks c"
                                " WHERE {counted} LIMIT %(cap)s) s)").format(counted=counted))
            branches = sql.SQL("({}) UNION ALL ({})").format(
                ranking.format(distance=exact, where=where,
                               gate=sql.SQL(" AND (SELECT n FROM scope) <= %(exact_max)s")),
                ranking.format(distance=approximate, where=where,
                               gate=sql.SQL(" AND (SELECT n FROM scope) > %(exact_max)s")))
            scope_rows = sql.SQL("(SELECT n FROM scope)")
        else:
            branches = ranking.format(distance=exact if plan.path == "exact" else approximate, where=where,
                                      gate=sql.SQL(""))
        ctes.append(sql.SQL(
            "v AS MATERIALIZED ({branches}),"
            " vr AS (SELECT id, distance, row_number() OVER (ORDER BY distance, id) AS rank FROM v)").format(
                branches=branches))
    if has_text:
        params["qt"] = plan.keywords
        tsquery = sql.SQL("websearch_to_tsquery('english', %(qt)s)")
        if not WEBSEARCH_OPERATORS.search(plan.keywords):
            tsquery = sql.SQL("replace({}::text, ' & ', ' | ')::tsquery").format(tsquery)
        ctes.append(sql.SQL(
            "t AS MATERIALIZED (SELECT c.id, ts_rank_cd(c.tsv, q.query) AS relevance"
            " FROM chunks c, (SELECT {tsquery} AS query) AS q"
            " WHERE {where} AND c.tsv @@ q.query ORDER BY relevance DESC, c.id LIMIT %(n)s),"
            " tr AS (SELECT id, row_number() OVER (ORDER BY relevance DESC, id) AS rank FROM t)").format(
                tsquery=tsquery, where=where))
    if has_vector and has_text:
        fused = sql.SQL(
            "fused AS (SELECT coalesce(vr.id, tr.id) AS id, coalesce(vr.rank, 0) AS vector_rank,"
            " coalesce(tr.rank, 0) AS text_rank,"
            " coalesce(%(wv)s / (%(rrf)s + vr.rank), 0) + coalesce(%(wt)s / (%(rrf)s + tr.rank), 0) AS score"
            " FROM vr FULL JOIN tr ON vr.id = tr.id ORDER BY score DESC, vr.rank NULLS LAST, tr.rank NULLS LAST"
            " LIMIT %(k)s)")
    elif has_vector:
        fused = sql.SQL(
            "fused AS (SELECT id, rank AS vector_rank, 0::bigint AS text_rank, %(wv)s / (%(rrf)s + rank) AS score"
            " FROM vr ORDER BY rank LIMIT %(k)s)")
    elif has_text:
        fused = sql.SQL(
            "fused AS (SELECT id, 0::bigint AS vector_rank, rank AS text_rank, %(wt)s / (%(rrf)s + rank) AS score"
            " FROM tr ORDER BY rank LIMIT %(k)s)")
    else:
        raise InvalidArgument("nothing to rank by: give a query vector or text with a positive weight")
    ctes.append(fused)
    similarity = (sql.SQL("1 - (c.embedding <=> %(qv)s::vector)") if plan.vector is not None
                  else sql.SQL("0::float8"))
    query = sql.SQL(
        "WITH {ctes} SELECT f.score, f.vector_rank, f.text_rank, {similarity} AS similarity,"
        " {scope_rows} AS scope_rows, (SELECT active_version FROM collections WHERE id = %(cid)s) AS active_version,"
        " c.chunk_id, c.document_id, c.chunk_index, c.text, c.start_offset,"
        " c.end_offset, c.section, d.title, d.source, d.metadata, d.doc_type, d.tags"
        " FROM fused f JOIN chunks c ON c.id = f.id"
        " JOIN documents d ON d.collection_id = c.collection_id AND d.document_id = c.document_id"
        " ORDER BY f.score DESC, f.vector_rank = 0, f.vector_rank, c.id").format(
            ctes=sql.SQL(", ").join(ctes), similarity=similarity, scope_rows=scope_rows)
    return query, params


def hit_from_row(row: dict[str, Any]) -> Hit:
    return Hit(chunk_id=row["chunk_id"], document_id=row["document_id"], title=row["title"], source=row["source"],
               index=row["chunk_index"], text=row["text"], start_offset=row["start_offset"],
               end_offset=row["end_offset"], section=row["section"], score=float(row["score"]),
               vector_rank=int(row["vector_rank"]), text_rank=int(row["text_rank"]),
               similarity=float(row["similarity"]), metadata=dict(row["metadata"] or {}),
               doc_type=row["doc_type"], tags=list(row["tags"] or []))


class RetrieverStore:
    def __init__(self, db: RetrieverDatabase, *, hnsw_m: int = 16, hnsw_ef_construction: int = 64,
                 index_build_memory: str = "256MB") -> None:
        self.db = db
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.index_build_memory = index_build_memory
        self._indexed_dims: set[int] = set()

    # -- collections ---------------------------------------------------------------------------------

    async def create_collection(self, tenant: str, name: str, description: str,
                                embedding_model: str) -> tuple[Collection, bool]:
        async with self.db.connection() as conn:
            row = await (await conn.execute(sql.SQL(
                "INSERT INTO collections (tenant, name, description, embedding_model) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (tenant, name) DO NOTHING RETURNING {}").format(COLLECTION_COLUMNS),
                (tenant, name, description, embedding_model))).fetchone()
            if row is not None:
                return Collection.from_row(row), True
            existing = await self.collection(conn, tenant, name)
        assert existing is not None
        return existing, False

    async def collection(self, conn: AsyncConnection, tenant: str, name: str, *, lock: str = "") -> Collection | None:
        """A collection by tenant and name; `lock` "share" or "update" locks its row for the transaction."""
        suffix = {"": "", "share": " FOR SHARE", "update": " FOR UPDATE"}[lock]
        row = await (await conn.execute(sql.SQL("SELECT {} FROM collections WHERE tenant = %s AND name = %s" + suffix)
                                        .format(COLLECTION_COLUMNS), (tenant, name))).fetchone()
        return Collection.from_row(row) if row else None

    async def read_collection(self, tenant: str, name: str) -> Collection | None:
        async with self.db.read() as conn:
            return await self.collection(conn, tenant, name)

    async def lock_collection_by_id(self, conn: AsyncConnection, collection_id: int) -> Collection:
        row = await (await conn.execute(sql.SQL("SELECT {} FROM collections WHERE id = %s FOR UPDATE")
                                        .format(COLLECTION_COLUMNS), (collection_id,))).fetchone()
        assert row is not None
        return Collection.from_row(row)

    async def list_collections(self, tenant: str) -> list[Collection]:
        """Collections of `tenant` (every tenant when empty) with their live document counts and the
        re-index progress."""
        where = sql.SQL("WHERE c.tenant = %s") if tenant else sql.SQL("")
        async with self.db.read() as conn:
            rows = await (await conn.execute(sql.SQL(
                "SELECT c.*, coalesce(d.live, 0) AS document_count, coalesce(d.done, 0) AS pending_documents_done"
                " FROM collections c LEFT JOIN LATERAL (SELECT count(*) AS live,"
                " count(*) FILTER (WHERE pending_revision = revision) AS done"
                " FROM documents WHERE collection_id = c.id AND NOT deleted) d ON TRUE {}"
                " ORDER BY c.tenant, c.name").format(where), (tenant,) if tenant else ())).fetchall()
        return [Collection.from_row(r) for r in rows]

    async def collections_of_model(self, conn: AsyncConnection, model_name: str) -> list[Collection]:
        """The collections indexed with `model_name`, locked for the transaction (in id order)."""
        rows = await (await conn.execute(sql.SQL(
            "SELECT {} FROM collections WHERE embedding_model = %s ORDER BY id FOR UPDATE").format(COLLECTION_COLUMNS),
            (model_name,))).fetchall()
        return [Collection.from_row(r) for r in rows]

    async def set_generation(self, conn: AsyncConnection, collection_id: int, *, active_version: int | None = None,
                             dimensions: int | None = None, pending_dimensions: int | None = None) -> None:
        """Bind the active version (and/or the dimensions of the active or pending one)."""
        sets, params = [], []
        for column, value in (("active_version", active_version), ("dimensions", dimensions),
                              ("pending_dimensions", pending_dimensions)):
            if value is not None:
                sets.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        if sets:
            await conn.execute(sql.SQL("UPDATE collections SET {}, updated_at = now() WHERE id = %s").format(
                sql.SQL(", ").join(sets)), (*params, collection_id))

    async def add_chunk_counts(self, conn: AsyncConnection, collection_id: int, *, active: int = 0,
                               pending: int = 0) -> None:
        if active or pending:
            await conn.execute("UPDATE collections SET active_chunks = active_chunks + %s,"
                               " pending_chunks = pending_chunks + %s WHERE id = %s", (active, pending, collection_id))

    async def start_pending(self, conn: AsyncConnection, coll: Collection, version: int) -> int:
        """Make `version` the collection's pending generation (dropping a previous pending one) and mark every
        live document as not yet indexed in it; the re-indexer queues them from the start. Returns the number
        of live documents."""
        if coll.pending_version is not None:
            await self.delete_generation(conn, coll.id, coll.pending_version)
        await conn.execute(
            "UPDATE collections SET pending_version = %s, pending_dimensions = NULL, pending_chunks = 0,"
            " reindex_cursor = '', updated_at = now() WHERE id = %s", (version, coll.id))
        cur = await conn.execute("UPDATE documents SET pending_revision = 0 WHERE collection_id = %s AND NOT deleted",
                                 (coll.id,))
        await conn.execute("UPDATE documents SET pending_revision = NULL WHERE collection_id = %s AND deleted",
                           (coll.id,))
        return cur.rowcount

    async def cancel_pending(self, conn: AsyncConnection, coll: Collection) -> None:
        if coll.pending_version is None:
            return
        await self.delete_generation(conn, coll.id, coll.pending_version)
        await conn.execute(
            "UPDATE collections SET pending_version = NULL, pending_dimensions = NULL, pending_chunks = 0,"
            " reindex_cursor = NULL, updated_at = now() WHERE id = %s", (coll.id,))
        await conn.execute("UPDATE documents SET pending_revision = NULL WHERE collection_id = %s", (coll.id,))

    async def pending_left(self, conn: AsyncConnection, collection_id: int) -> bool:
        """Whether a live document still lacks chunks of the pending version at its current revision."""
        row = await (await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM documents WHERE collection_id = %s AND NOT deleted"
            " AND pending_revision < revision) AS left", (collection_id,))).fetchone()
        return bool(row and row["left"])

    async def switch_to_pending(self, conn: AsyncConnection, coll: Collection) -> None:
        """Pending becomes active in one UPDATE (queries from then on use it); then the old generation goes."""
        await conn.execute(
            "UPDATE collections SET active_version = pending_version,"
            " dimensions = pending_dimensions,"
            " active_chunks = pending_chunks, pending_version = NULL, pending_dimensions = NULL, pending_chunks = 0,"
            " reindex_cursor = NULL, updated_at = now() WHERE id = %s", (coll.id,))
        await conn.execute("UPDATE documents SET active_revision = pending_revision, pending_revision = NULL"
                           " WHERE collection_id = %s", (coll.id,))
        if coll.active_version is not None and coll.active_version != coll.pending_version:
            await self.delete_generation(conn, coll.id, coll.active_version)

    async def delete_generation(self, conn: AsyncConnection, collection_id: int, version: int) -> int:
        cur = await conn.execute("DELETE FROM chunks WHERE collection_id = %s AND model_version = %s",
                                 (collection_id, version))
        return cur.rowcount

    # -- re-indexing ---------------------------------------------------------------------------------

    async def claim_reindex(self, conn: AsyncConnection) -> Collection | None:
        """A collection with documents still to queue for its pending version, locked (another replica's
        re-indexer skips it)."""
        row = await (await conn.execute(sql.SQL(
            "SELECT {} FROM collections WHERE reindex_cursor IS NOT NULL AND pending_version IS NOT NULL"
            " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED").format(COLLECTION_COLUMNS))).fetchone()
        return Collection.from_row(row) if row else None

    async def documents_after(self, conn: AsyncConnection, collection_id: int, after: str,
                              limit: int) -> list[Document]:
        rows = await (await conn.execute(
            "SELECT * FROM documents WHERE collection_id = %s AND NOT deleted AND document_id > %s"
            " ORDER BY document_id LIMIT %s", (collection_id, after, limit))).fetchall()
        return [Document.from_row(r) for r in rows]

    async def set_reindex_cursor(self, conn: AsyncConnection, collection_id: int, cursor: str | None) -> None:
        await conn.execute("UPDATE collections SET reindex_cursor = %s WHERE id = %s", (cursor, collection_id))

    # -- documents -----------------------------------------------------------------------------------

    async def lock_document(self, conn: AsyncConnection, collection_id: int, document_id: str) -> Document | None:
        row = await (await conn.execute(
            "SELECT * FROM documents WHERE collection_id = %s AND document_id = %s FOR UPDATE",
            (collection_id, document_id))).fetchone()
        return Document.from_row(row) if row else None

    async def put_document(self, conn: AsyncConnection, coll: Collection, doc: NewDocument, revision: int) -> Document:
        """Insert or replace a document's text and metadata at `revision` (its chunks stay until the new
        revision's arrive). Under a running re-index it waits for its pending chunks too."""
        pending = 0 if coll.pending_version is not None else None
        row = await (await conn.execute(
            "INSERT INTO documents (collection_id, document_id, tenant, title, source, mime_type, text,"
            " content_sha256, characters, revision, doc_type, tags, document_date, metadata, deleted,"
            " pending_revision, ingested_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, false, %s, now())"
            " ON CONFLICT (collection_id, document_id) DO UPDATE SET title = EXCLUDED.title,"
            " source = EXCLUDED.source, mime_type = EXCLUDED.mime_type, text = EXCLUDED.text,"
            " content_sha256 = EXCLUDED.content_sha256, characters = EXCLUDED.characters,"
            " revision = EXCLUDED.revision, doc_type = EXCLUDED.doc_type, tags = EXCLUDED.tags,"
            " document_date = EXCLUDED.document_date, metadata = EXCLUDED.metadata, deleted = false,"
            " pending_revision = CASE WHEN %s THEN coalesce(documents.pending_revision, 0) END,"
            " ingested_at = now() RETURNING *",
            (coll.id, doc.document_id, coll.tenant, doc.title, doc.source, doc.mime_type, doc.text,
             doc.content_sha256, len(doc.text), revision, doc.doc_type, doc.tags, doc.document_date,
             Jsonb(doc.metadata), pending, pending is not None))).fetchone()
        assert row is not None
        return Document.from_row(row)

    async def update_metadata(self, conn: AsyncConnection, existing: Document, doc: NewDocument) -> bool:
        """Same text, maybe new title/source/filterable metadata: updated in place, in the document and in
        the chunks of every generation (no re-embedding). Whether anything changed."""
        if (existing.title, existing.source, existing.doc_type, list(existing.tags), existing.document_date,
                dict(existing.metadata)) == (doc.title, doc.source, doc.doc_type, list(doc.tags), doc.document_date,
                                             dict(doc.metadata)):
            return False
        await conn.execute(
            "UPDATE documents SET title = %s, source = %s, doc_type = %s, tags = %s, document_date = %s,"
            " metadata = %s WHERE collection_id = %s AND document_id = %s",
            (doc.title, doc.source, doc.doc_type, doc.tags, doc.document_date, Jsonb(doc.metadata),
             existing.collection_id, existing.document_id))
        await conn.execute(
            "UPDATE chunks SET doc_type = %s, tags = %s, document_date = %s WHERE collection_id = %s"
            " AND document_id = %s AND model_version IN (SELECT unnest(ARRAY[active_version, pending_version])"
            " FROM collections WHERE id = %s)",
            (doc.doc_type, doc.tags, doc.document_date, existing.collection_id, existing.document_id,
             existing.collection_id))
        return True

    async def tombstone(self, conn: AsyncConnection, doc: Document) -> int:
        """Mark a document deleted at its next revision (its text dropped, the row kept so late events about
        older revisions are recognised and ignored); returns that revision. Chunks: `delete_document_chunks`."""
        revision = doc.revision + 1
        await conn.execute(
            "UPDATE documents SET deleted = true, revision = %s, text = '', characters = 0, active_revision = NULL,"
            " pending_revision = NULL, ingested_at = now() WHERE collection_id = %s AND document_id = %s",
            (revision, doc.collection_id, doc.document_id))
        return revision

    async def delete_document_chunks(self, conn: AsyncConnection, collection_id: int,
                                     document_id: str) -> dict[int, int]:
        """Remove a document's chunks of every generation; chunks removed per model version."""
        rows = await (await conn.execute(
            "WITH gone AS (DELETE FROM chunks WHERE collection_id = %s AND document_id = %s RETURNING model_version)"
            " SELECT model_version, count(*) AS n FROM gone GROUP BY model_version",
            (collection_id, document_id))).fetchall()
        return {r["model_version"]: r["n"] for r in rows}

    async def get_document(self, tenant: str, collection_id: int, document_id: str) -> Document | None:
        async with self.db.read() as conn:
            row = await (await conn.execute(
                "SELECT * FROM documents WHERE tenant = %s AND collection_id = %s AND document_id = %s"
                " AND NOT deleted", (tenant, collection_id, document_id))).fetchone()
        return Document.from_row(row) if row else None

    async def list_documents(self, tenant: str, collection_id: int, page_size: int, token: str,
                             include_text: bool) -> tuple[list[Document], str]:
        if page_size < 0:
            raise InvalidArgument(f"page_size must not be negative, got {page_size}")
        size = min(page_size or DEFAULT_PAGE, MAX_PAGE)
        after = parse_page_token(token) or ""
        text = sql.SQL("text") if include_text else sql.SQL("'' AS text")
        async with self.db.read() as conn:
            rows = await (await conn.execute(sql.SQL(
                "SELECT collection_id, document_id, tenant, title, source, mime_type, {}, content_sha256, characters,"
                " revision, doc_type, tags, document_date, metadata, deleted, active_revision, pending_revision,"
                " ingested_at FROM documents WHERE tenant = %s AND collection_id = %s AND NOT deleted"
                " AND document_id > %s ORDER BY document_id LIMIT %s").format(text),
                (tenant, collection_id, after, size + 1))).fetchall()
        docs = [Document.from_row(r) for r in rows[:size]]
        return docs, (page_token(docs[-1].document_id) if len(rows) > size else "")

    async def document_chunks(self, tenant: str, collection_id: int, version: int, document_id: str) -> list[Hit]:
        async with self.db.read() as conn:
            rows = await (await conn.execute(
                "SELECT 0::float8 AS score, 0 AS vector_rank, 0 AS text_rank, 0::float8 AS similarity, c.chunk_id,"
                " c.document_id, c.chunk_index, c.text, c.start_offset, c.end_offset, c.section, d.title, d.source,"
                " d.metadata, d.doc_type, d.tags FROM chunks c JOIN documents d"
                " ON d.collection_id = c.collection_id AND d.document_id = c.document_id"
                " WHERE c.tenant = %s AND c.collection_id = %s AND c.model_version = %s AND c.document_id = %s"
                " ORDER BY c.chunk_index", (tenant, collection_id, version, document_id))).fetchall()
        return [hit_from_row(r) for r in rows]

    # -- chunks --------------------------------------------------------------------------------------

    async def replace_chunks(self, conn: AsyncConnection, doc: Document, version: int, dims: int,
                             chunks: Sequence[ChunkIn]) -> tuple[int, int]:
        """Replace a document's chunks of one generation by `chunks` (at the document's current revision and
        filterable metadata), in the caller's transaction: a reader sees the old set or the new one.
        Returns (removed, added)."""
        removed = (await conn.execute(
            "DELETE FROM chunks WHERE collection_id = %s AND model_version = %s AND document_id = %s",
            (doc.collection_id, version, doc.document_id))).rowcount
        if chunks:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO chunks (collection_id, tenant, model_version, document_id, revision, chunk_id,"
                    " chunk_index, text, start_offset, end_offset, section, token_count, dims, embedding, doc_type,"
                    " tags, document_date) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                    " %s::vector, %s, %s, %s)",
                    [(doc.collection_id, doc.tenant, version, doc.document_id, doc.revision, c.chunk_id, c.index,
                      c.text, c.start_offset, c.end_offset, c.section, c.token_count, dims, vector_param(c.vector),
                      doc.doc_type, doc.tags, doc.document_date) for c in chunks])
        return removed, len(chunks)

    async def mark_indexed(self, conn: AsyncConnection, doc: Document, *, active: bool) -> None:
        column = sql.Identifier("active_revision" if active else "pending_revision")
        await conn.execute(sql.SQL("UPDATE documents SET {} = revision WHERE collection_id = %s AND document_id = %s")
                           .format(column), (doc.collection_id, doc.document_id))

    async def known_vector_indexes(self) -> set[int]:
        async with self.db.read() as conn:
            rows = await (await conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'chunks'"
                " AND indexname LIKE 'chunks_hnsw_%%'")).fetchall()
        found = set()
        for r in rows:
            suffix = r["indexname"].removeprefix("chunks_hnsw_")
            if suffix.isdigit():
                found.add(int(suffix))
        self._indexed_dims |= found
        return found

    async def ensure_vector_index(self, conn: AsyncConnection, dims: int) -> bool:
        """The partial HNSW index of `dims`-dimensional vectors, created in the caller's transaction when a
        generation of that many dimensions first arrives (it covers no row yet, so it builds at once).
        Whether it was created now."""
        if dims in self._indexed_dims:
            return False
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.chunks_hnsw'))")
        exists = await (await conn.execute(
            "SELECT 1 FROM pg_indexes WHERE schemaname = current_schema() AND indexname = %s",
            (vector_index_name(dims),))).fetchone()
        if exists:
            self._indexed_dims.add(dims)  # remembered once it is known committed
            return False
        await conn.execute(self.vector_index_ddl(dims))
        return True

    def vector_index_ddl(self, dims: int) -> sql.Composable:
        return sql.SQL(
            "CREATE INDEX IF NOT EXISTS {name} ON chunks USING hnsw ((embedding::vector({d})) vector_cosine_ops)"
            " WITH (m = {m}, ef_construction = {ef}) WHERE dims = {d}").format(
                name=sql.Identifier(vector_index_name(dims)), d=sql.Literal(int(dims)),
                m=sql.Literal(self.hnsw_m), ef=sql.Literal(self.hnsw_ef_construction))

    async def rebuild_vector_index(self, dims: int) -> None:
        """Drop and build the HNSW index of `dims` over every row (after a bulk load), with
        `maintenance_work_mem` = the index build memory."""
        async with self.db.connection() as conn:
            await conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(
                sql.Literal(self.index_build_memory)))
            await conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(vector_index_name(dims))))
            await conn.execute(self.vector_index_ddl(dims))
            await conn.execute("ANALYZE chunks")
        self._indexed_dims.add(dims)

    async def bulk_load(self, coll: Collection, version: int, documents: Iterable[tuple[str, str]],
                        chunks: Iterable[tuple[str, int, str, np.ndarray, str, list[str], datetime | None]]) -> int:
        """Load documents (id, text) and chunks (document id, index, text, vector, doc type, tags, date) of one
        generation straight into the tables with COPY (benchmarks and migrations; no events). The documents
        are marked indexed at revision 1. Build the HNSW index afterwards (`rebuild_vector_index`)."""
        loaded = 0
        dims = None
        async with self.db.connection() as conn:
            async with conn.cursor().copy(
                    "COPY documents (collection_id, document_id, tenant, text, characters, revision, active_revision)"
                    " FROM STDIN") as copy:
                for document_id, text in documents:
                    await copy.write_row((coll.id, document_id, coll.tenant, text, len(text), 1, 1))
            await conn.execute("CREATE TEMP TABLE chunk_load (document_id text, chunk_index int, text text,"
                               " embedding real[], doc_type text, tags text[], document_date timestamptz)"
                               " ON COMMIT DROP")
            async with conn.cursor().copy("COPY chunk_load FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "int4", "text", "float4[]", "text", "text[]", "timestamptz"])
                for document_id, index, text, vector, doc_type, tags, date in chunks:
                    dims = dims or len(vector)
                    await copy.write_row((document_id, index, text, vector.tolist(), doc_type, tags, date))
                    loaded += 1
            if dims is None:
                return 0
            await conn.execute(
                "INSERT INTO chunks (collection_id, tenant, model_version, document_id, revision, chunk_id,"
                " chunk_index, text, dims, embedding, doc_type, tags, document_date)"
                " SELECT %s, %s, %s, document_id, 1, document_id || '#' || chunk_index, chunk_index, text, %s,"
                " embedding::vector, doc_type, tags, document_date FROM chunk_load",
                (coll.id, coll.tenant, version, dims))
            await conn.execute(
                "UPDATE collections SET active_version = coalesce(active_version, %s),"
                " dimensions = coalesce(dimensions, %s), active_chunks = active_chunks + %s WHERE id = %s",
                (version, dims, loaded, coll.id))
        return loaded

    # -- search --------------------------------------------------------------------------------------

    async def search(self, conn: AsyncConnection, plan: SearchPlan) -> Found:
        query, params = search_sql(plan)
        rows = await (await conn.execute(query, params)).fetchall()
        first = rows[0] if rows else {}
        return Found([hit_from_row(r) for r in rows], first.get("scope_rows"), first.get("active_version"))

    async def active_version(self, conn: AsyncConnection, collection_id: int) -> int | None:
        row = await (await conn.execute("SELECT active_version FROM collections WHERE id = %s",
                                        (collection_id,))).fetchone()
        return row["active_version"] if row else None
