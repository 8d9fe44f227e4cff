"""The applications table (inference's schema): definitions as JSON, and a revision that moves with every change."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from flywheel.common.db import Database
from flywheel.inference.apps.domain import Application, parse_application


def _row(row: dict[str, Any]) -> Application:
    app = parse_application(row["name"], row["spec"])
    return app.stored(revision=row["revision"], created_at=row["created_at"], updated_at=row["updated_at"],
                      created_by=row["created_by"], updated_by=row["updated_by"])


class ApplicationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def revision(self) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT revision FROM applications_revision")
            row = await cur.fetchone()
            return int(row["revision"]) if row else 0

    async def load(self) -> tuple[int, dict[str, Application]]:
        """(revision, every application). The revision is read first: a change committed in between makes the
        table newer than the revision, never older, so the next poll reads it again."""
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT revision FROM applications_revision")
            row = await cur.fetchone()
            cur = await conn.execute("SELECT * FROM applications ORDER BY name")
            apps = {r["name"]: _row(r) for r in await cur.fetchall()}
        return (int(row["revision"]) if row else 0), apps

    @staticmethod
    async def _bump(conn: AsyncConnection) -> int:
        cur = await conn.execute("UPDATE applications_revision SET revision = revision + 1 RETURNING revision")
        row = await cur.fetchone()
        assert row is not None, "applications_revision has no row"
        return int(row["revision"])

    async def put(self, app: Application, principal: str) -> tuple[Application, bool]:
        """Create or replace; returns (the stored application, whether it was created)."""
        async with self.db.connection() as conn:
            revision = await self._bump(conn)  # also serializes writers (the row lock)
            cur = await conn.execute(
                "INSERT INTO applications (name, spec, revision, created_by, updated_by) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, revision = EXCLUDED.revision,"
                " updated_at = now(), updated_by = EXCLUDED.updated_by"
                " RETURNING *, (xmax = 0) AS inserted",
                (app.name, Jsonb(app.spec()), revision, principal, principal))
            row = await cur.fetchone()
            assert row is not None
            return _row(row), bool(row["inserted"])

    async def delete(self, name: str) -> bool:
        async with self.db.connection() as conn:
            cur = await conn.execute("DELETE FROM applications WHERE name = %s", (name,))
            if cur.rowcount == 0:
                return False
            await self._bump(conn)
            return True
