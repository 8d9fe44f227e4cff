"""The response cache's table (`llm_cache` in inference's schema): exact lookups by key, the nearest
embedded question inside one context key (exact cosine search over that scope), writes, eviction of the
rows a promotion made stale, and the purge of expired rows."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from flywheel.common.db import Database, MruConnectionPool, migrate
from flywheel.inference.cache.entries import CachedAnswer

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
TRACK = "llm_cache"
ANSWER_COLUMNS = ("answer, token_ids, finish_reason, prompt_tokens, completion_tokens, model, model_version, tenant,"
                  " dependencies, extract(epoch FROM expires_at) AS expires_at, extra")


@dataclass(frozen=True)
class Neighbour:
    """A row of the semantic scope and how close its question is to the one asked."""

    similarity: float
    question: str
    exact_key: str
    answer: CachedAnswer


@dataclass(frozen=True)
class QuestionVector:
    model: str
    version: int
    values: Sequence[float]


def vector_literal(values: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def _answer(row: dict[str, Any]) -> CachedAnswer:
    return CachedAnswer(text=row["answer"], token_ids=tuple(row["token_ids"]), finish_reason=row["finish_reason"],
                        prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
                        model=row["model"], model_version=row["model_version"], tenant=row["tenant"],
                        dependencies=row["dependencies"], expires_at=float(row["expires_at"]), extra=row["extra"])


class CacheStore:
    """Its own small pool of autocommit connections (each statement its own snapshot: a lookup is one round
    trip), so cache traffic never waits behind the consumer's or the token checks' connections."""

    def __init__(self, url: str, schema: str, *, max_size: int = 4) -> None:
        self.db = Database(url, schema, min_size=1, max_size=1)  # for the migration track only (never opened)
        self.schema = schema
        self.pool = MruConnectionPool(url, min_size=1, max_size=max_size, open=False, configure=self._configure,
                                      kwargs={"autocommit": True, "row_factory": dict_row,
                                              "prepare_threshold": 2}, name=f"flywheel-{schema}-llm-cache")

    async def _configure(self, conn: AsyncConnection) -> None:
        await conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(self.schema)))

    async def open(self) -> CacheStore:
        await migrate(self.db, MIGRATIONS, track=TRACK)
        await self.pool.open(wait=True, timeout=30)
        return self

    async def close(self) -> None:
        await self.pool.close()

    async def get(self, exact_key: str) -> CachedAnswer | None:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                f"SELECT {ANSWER_COLUMNS} FROM llm_cache WHERE exact_key = %s AND expires_at > now()",
                (exact_key,))).fetchone()
        return _answer(row) if row is not None else None

    async def nearest(self, context_key: str, tenant: str, vector: QuestionVector, *, limit: int = 4
                      ) -> list[Neighbour]:
        """The rows of this context key and tenant, embedded by the same embedding model version, whose
        questions are nearest to `vector` (cosine), nearest first. Exact: the btree finds the scope, the
        distances of all its rows are computed and sorted."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(
                f"SELECT exact_key, question, 1 - (embedding <=> %(v)s::vector) AS similarity, {ANSWER_COLUMNS}"
                " FROM llm_cache WHERE context_key = %(c)s AND tenant = %(t)s AND embedding_model = %(m)s"
                " AND embedding_version = %(mv)s AND embedding IS NOT NULL AND expires_at > now()"
                " ORDER BY embedding <=> %(v)s::vector LIMIT %(k)s",
                {"v": vector_literal(vector.values), "c": context_key, "t": tenant, "m": vector.model,
                 "mv": vector.version, "k": limit})).fetchall()
        return [Neighbour(float(r["similarity"]), r["question"], r["exact_key"], _answer(r)) for r in rows]

    async def put(self, exact_key: str, context_key: str | None, question: str | None,
                  vector: QuestionVector | None, answer: CachedAnswer) -> None:
        """Insert or replace the row of `exact_key`."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO llm_cache (exact_key, context_key, tenant, model, model_version, dependencies, question,"
                " embedding_model, embedding_version, embedding, answer, token_ids, finish_reason, prompt_tokens,"
                " completion_tokens, extra, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::vector, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (exact_key) DO UPDATE SET context_key = EXCLUDED.context_key,"
                " question = EXCLUDED.question, embedding_model = EXCLUDED.embedding_model,"
                " embedding_version = EXCLUDED.embedding_version, embedding = EXCLUDED.embedding,"
                " answer = EXCLUDED.answer, token_ids = EXCLUDED.token_ids, finish_reason = EXCLUDED.finish_reason,"
                " prompt_tokens = EXCLUDED.prompt_tokens, completion_tokens = EXCLUDED.completion_tokens,"
                " extra = EXCLUDED.extra, dependencies = EXCLUDED.dependencies, created_at = now(),"
                " expires_at = EXCLUDED.expires_at",
                (exact_key, context_key, answer.tenant, answer.model, answer.model_version,
                 json.dumps(dict(answer.dependencies)), question, vector.model if vector else None,
                 vector.version if vector else None, vector_literal(vector.values) if vector else None,
                 answer.text, list(answer.token_ids), answer.finish_reason, answer.prompt_tokens,
                 answer.completion_tokens, json.dumps(dict(answer.extra)),
                 datetime.fromtimestamp(answer.expires_at, UTC)))

    async def evict(self, name: str, keep_version: int, conn: AsyncConnection | None = None) -> int:
        """Delete the rows that depend on `name` at another version than `keep_version`; how many."""
        statement = ("DELETE FROM llm_cache WHERE dependencies ? %(n)s"
                     " AND (dependencies ->> %(n)s)::bigint <> %(v)s")
        params = {"n": name, "v": keep_version}
        if conn is not None:
            return (await conn.execute(statement, params)).rowcount
        async with self.pool.connection() as own:
            return (await own.execute(statement, params)).rowcount

    async def purge(self, max_rows: int) -> int:
        """Delete expired rows, then the oldest beyond `max_rows`; how many."""
        async with self.pool.connection() as conn:
            deleted = (await conn.execute("DELETE FROM llm_cache WHERE expires_at <= now()")).rowcount
            if max_rows > 0:
                deleted += (await conn.execute(
                    "DELETE FROM llm_cache WHERE exact_key IN (SELECT exact_key FROM llm_cache"
                    " ORDER BY created_at DESC OFFSET %s)", (max_rows,))).rowcount
        return deleted

    async def count(self, **where: Any) -> int:
        """Rows matching column = value filters (tests and the bench)."""
        clauses = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in where) \
            if where else sql.SQL("true")
        async with self.pool.connection() as conn:
            row = await (await conn.execute(sql.SQL("SELECT count(*) AS n FROM llm_cache WHERE {}").format(clauses),
                                            tuple(where.values()))).fetchone()
        return int(row["n"]) if row else 0
