"""PostgreSQL access: an async connection pool per service schema, and migrations.

Each service owns one schema (its tables never get read by another service).
Migrations are ordered `NNNN_name.sql` files in the service's `migrations/` folder,
applied at start-up inside one transaction each, under an advisory lock so several
replicas starting at once apply them exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

COMMON_MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MruConnectionPool(AsyncConnectionPool):
    """psycopg's pool, handing out the most recently returned idle connection first (psycopg_pool hands out the
    least recent: a steady caller then rotates over every connection the pool ever grew to, each query landing
    in a backend process whose caches went cold while the others ran). Idle connections stay ordered from
    least to most recently used, so the pool's shrinking still closes the least recently used one. It hooks
    psycopg_pool's `_get_ready_connection` (3.2-3.3, called under the pool's lock); the integration test
    `test_pool_hands_out_the_most_recently_returned_connection` fails if a release moves it."""

    async def _get_ready_connection(self, timeout: float | None) -> Any:
        if len(self._pool) > 1:
            self._pool.rotate(1)  # the most recent (right end) to the end the pool takes from
        return await super()._get_ready_connection(timeout)


class Database:
    """A connection pool whose connections use the service's schema first."""

    def __init__(self, url: str, schema: str, *, min_size: int = 1, max_size: int = 10) -> None:
        if not SCHEMA_NAME.match(schema):
            raise ValueError(f"schema name {schema!r} must match {SCHEMA_NAME.pattern}")
        self.url = url
        self.schema = schema
        self.pool = MruConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, configure=self._configure,
            kwargs={"autocommit": False, "row_factory": dict_row}, name=f"flywheel-{schema}",
        )

    async def _configure(self, conn: AsyncConnection) -> None:
        await conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(self.schema)))
        await conn.commit()

    async def open(self, migrations: Path | None = None) -> Database:
        """Open the pool and apply the shared tables (outbox, processed events), then the service's."""
        await self.pool.open(wait=True, timeout=30)
        await migrate(self, COMMON_MIGRATIONS, track="common")
        if migrations is not None:
            await migrate(self, migrations, track="service")
        return self

    async def close(self) -> None:
        await self.pool.close()

    def connection(self):
        """`async with db.connection() as conn:` commits on success, rolls back on error."""
        return self.pool.connection()


async def migrate(db: Database, folder: Path, track: str = "service") -> list[str]:
    """Apply the migrations in `folder` that this schema has not seen; returns their names.

    A schema has two tracks of numbered migrations: `common` (tables every service
    has, shipped with this library) and `service` (the service's own).
    """
    files = sorted(p for p in folder.iterdir() if MIGRATION_FILE.match(p.name))  # noqa: ASYNC240 - a few names
    numbers = [p.name[:4] for p in files]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"two migrations in {folder} share a number: {numbers}")
    applied: list[str] = []
    schema = sql.Identifier(db.schema)
    # Advisory locks are per database; the schema is in the key so services do not wait on each other.
    async with advisory_lock(db.url, f"flywheel.migrate.{db.schema}") as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        await conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
            " version text PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(schema))
        cur = await conn.execute(sql.SQL("SELECT version FROM {}.schema_migrations").format(schema))
        done = {row[0] for row in await cur.fetchall()}
        for path in files:
            version = f"{track}:{path.name[:4]}"
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql.SQL("SET LOCAL search_path TO {}, public").format(schema))
                await conn.execute(path.read_text())  # type: ignore[arg-type]
                await conn.execute(
                    sql.SQL("INSERT INTO {}.schema_migrations (version, name) VALUES (%s, %s)").format(schema),
                    (version, path.name),
                )
            applied.append(path.name)
            log.info("migration applied", extra={"schema": db.schema, "migration": path.name})
    return applied


@contextlib.asynccontextmanager
async def advisory_lock(url: str, key: str) -> AsyncIterator[AsyncConnection]:
    """A new autocommit connection holding the session advisory lock of `key` (hashed) for the block, so that
    replicas starting together do the block one at a time; the connection is the caller's to use."""
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        try:
            yield conn
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
