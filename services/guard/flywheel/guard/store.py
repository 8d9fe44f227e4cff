"""The guard's database: policy versions per application, and the verdicts (audit trail) with their
outbox events, written in batches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from flywheel.common.db import Database
from flywheel.common.errors import NotFound
from flywheel.common.events import Event
from flywheel.common.outbox import enqueue

log = logging.getLogger(__name__)
POLICY_CHANNEL = "flywheel_guard_policies"


class GuardStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- policies ------------------------------------------------------------------------------

    async def add_policy(self, application: str, yaml_text: str, created_by: str,
                         only_if_none: bool = False) -> Mapping[str, Any] | None:
        """Store the next version of the application's policy (and tell every replica); with
        `only_if_none`, only when it has none yet (None otherwise)."""
        async with self.db.connection() as conn:
            # One writer per application at a time: versions are consecutive.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('flywheel.guard.policy.' || %s))",
                               (application,))
            current = await (await conn.execute(
                "SELECT coalesce(max(version), 0) AS v FROM policies WHERE application = %s",
                (application,))).fetchone()
            version = int(current["v"]) if current else 0
            if only_if_none and version:
                return None
            row = await (await conn.execute(
                "INSERT INTO policies (application, version, yaml, created_by) VALUES (%s, %s, %s, %s) RETURNING *",
                (application, version + 1, yaml_text, created_by))).fetchone()
            await conn.execute("SELECT pg_notify(%s, %s)", (POLICY_CHANNEL, application))
        return row

    async def policy(self, application: str, version: int = 0) -> Mapping[str, Any]:
        async with self.db.connection() as conn:
            if version:
                row = await (await conn.execute("SELECT * FROM policies WHERE application = %s AND version = %s",
                                                (application, version))).fetchone()
            else:
                row = await (await conn.execute(
                    "SELECT * FROM policies WHERE application = %s ORDER BY version DESC LIMIT 1",
                    (application,))).fetchone()
        if row is None:
            what = f"version {version} of " if version else ""
            raise NotFound(f"no {what}guard policy for application {application!r}")
        return row

    async def newest_policies(self) -> list[Mapping[str, Any]]:
        async with self.db.connection() as conn:
            return await (await conn.execute(
                "SELECT DISTINCT ON (application) * FROM policies ORDER BY application, version DESC")).fetchall()

    async def policy_changes(self) -> AsyncIterator[str]:
        """Applications whose policy changed, as NOTIFY tells them (any replica's PutPolicy); yields "" after
        (re)connecting, when changes may have been missed."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.db.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {POLICY_CHANNEL}")
                    yield ""
                    async for notice in conn.notifies():
                        yield notice.payload
            except (psycopg.OperationalError, OSError) as exc:
                log.warning("policy change listener lost its connection; reconnecting", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)

    # -- verdicts ------------------------------------------------------------------------------

    async def record_verdicts(self, rows: Sequence[Mapping[str, Any]], events: Sequence[Event]) -> None:
        """The verdict rows and their events (guard.verdicts, reviews.requested) in one transaction."""
        async with self.db.connection() as conn:
            await self._insert_verdicts(conn, rows)
            for event in events:
                await enqueue(conn, event)

    @staticmethod
    async def _insert_verdicts(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO verdicts (verdict_id, request_id, application, policy_version, stage, action, blocked,"
                " escalated, rule, rails_fired, scores, spans, redacted_text, principal, detectors, stream_window,"
                " latency_ms, checked_at) VALUES (%(verdict_id)s, %(request_id)s, %(application)s,"
                " %(policy_version)s, %(stage)s, %(action)s, %(blocked)s, %(escalated)s, %(rule)s, %(rails_fired)s,"
                " %(scores)s, %(spans)s, %(redacted_text)s, %(principal)s, %(detectors)s, %(stream_window)s,"
                " %(latency_ms)s, %(checked_at)s) ON CONFLICT (verdict_id) DO NOTHING",
                [{**r, "scores": Jsonb(r["scores"]), "spans": Jsonb(r["spans"])} for r in rows])

    async def verdict(self, verdict_id: str) -> Mapping[str, Any]:
        async with self.db.connection() as conn:
            row = await (await conn.execute("SELECT * FROM verdicts WHERE verdict_id = %s",
                                            (verdict_id,))).fetchone()
        if row is None:
            raise NotFound(f"no verdict {verdict_id!r}")
        return row

