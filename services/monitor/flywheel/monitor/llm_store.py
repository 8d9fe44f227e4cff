"""The SQL of online LLM scoring: application state (the lock that serializes window assignment), scored
generations, their windows, feedback on them and alerts. Every statement runs in the caller's transaction;
`LlmReadStore` is the read side for the API."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from flywheel.common.db import Database
from flywheel.common.errors import InvalidArgument


@dataclass
class AppState:
    application: str
    open_window_id: str | None
    windows: int
    model_name: str
    model_version: int
    epoch: int


@dataclass
class OpenWindow:
    window_id: str
    sequence: int
    model_name: str
    model_version: int
    epoch: int
    generations: int
    start: datetime | None
    end: datetime | None


async def lock_applications(conn: AsyncConnection, applications: Sequence[str]) -> dict[str, AppState]:
    """Each application's state (created when new), locked until commit, in name order (no deadlocks)."""
    await conn.execute("INSERT INTO llm_state (application) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                       (list(applications),))
    cur = await conn.execute(
        "SELECT application, open_window_id, windows, model_name, model_version, epoch FROM llm_state "
        "WHERE application = ANY(%s) ORDER BY application FOR UPDATE", (list(applications),))
    return {r["application"]: AppState(**r) for r in await cur.fetchall()}


async def lock_overdue_applications(conn: AsyncConnection, opened_before: datetime) -> list[AppState]:
    """States of applications whose open window opened before `opened_before`, skipping those another
    transaction holds; locked until commit."""
    cur = await conn.execute(
        "SELECT s.application, s.open_window_id, s.windows, s.model_name, s.model_version, s.epoch FROM llm_state s "
        "JOIN llm_windows w ON w.window_id = s.open_window_id WHERE w.opened_at < %s "
        "ORDER BY s.application FOR UPDATE OF s SKIP LOCKED", (opened_before,))
    return [AppState(**r) for r in await cur.fetchall()]


async def save_state(conn: AsyncConnection, s: AppState) -> None:
    await conn.execute(
        "UPDATE llm_state SET open_window_id = %s, windows = %s, model_name = %s, model_version = %s, epoch = %s "
        "WHERE application = %s",
        (s.open_window_id, s.windows, s.model_name, s.model_version, s.epoch, s.application))


async def open_window(conn: AsyncConnection, window_id: str) -> OpenWindow | None:
    cur = await conn.execute(
        "SELECT window_id, sequence, model_name, model_version, epoch, generations, start_ts AS start, "
        "end_ts AS end FROM llm_windows WHERE window_id = %s AND state = 'open'", (window_id,))
    row = await cur.fetchone()
    return OpenWindow(**row) if row else None


async def insert_window(conn: AsyncConnection, application: str, w: OpenWindow, opened_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO llm_windows (window_id, application, sequence, model_name, model_version, epoch, opened_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (w.window_id, application, w.sequence, w.model_name, w.model_version, w.epoch, opened_at))


async def grow_window(conn: AsyncConnection, w: OpenWindow) -> None:
    await conn.execute("UPDATE llm_windows SET generations = %s, start_ts = %s, end_ts = %s WHERE window_id = %s",
                       (w.generations, w.start, w.end, w.window_id))


async def stored_requests(conn: AsyncConnection, request_ids: Sequence[str]) -> set[str]:
    cur = await conn.execute("SELECT request_id FROM llm_generations WHERE request_id = ANY(%s)",
                             (list(request_ids),))
    return {r["request_id"] for r in await cur.fetchall()}


async def insert_generations(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Scored generations (dicts with the columns of llm_generations); one already stored is skipped."""
    if not rows:
        return
    columns = ("request_id", "application", "model_name", "model_version", "arm", "window_id", "ts",
               "groundedness", "refused", "pii_kinds", "finish_reason", "exchange")
    types = ("text", "text", "text", "bigint", "smallint", "text", "timestamptz", "float8", "bool", "text", "text",
             "bytea")
    await conn.execute(
        f"INSERT INTO llm_generations ({', '.join(columns)}) SELECT * FROM unnest("
        + ", ".join(f"%s::{t}[]" for t in types) + ") ON CONFLICT DO NOTHING",
        [[r[c] for r in rows] for c in columns])


async def window_rows(conn: AsyncConnection, window_id: str, sources: Sequence[int], *, exchanges: bool = False,
                      ) -> list[dict[str, Any]]:
    """The generations of a window with what their feedback says (negative: any negative, else false when
    some feedback said something, else null)."""
    cur = await conn.execute(
        "SELECT g.request_id, g.model_name, g.model_version, g.ts, g.groundedness, g.refused, g.pii_kinds, "
        + ("g.exchange, " if exchanges else "")
        + "(SELECT bool_or(f.negative) FROM llm_feedback f WHERE f.request_id = g.request_id "
          "AND f.source = ANY(%s)) AS negative FROM llm_generations g WHERE g.window_id = %s "
          "ORDER BY g.ts, g.request_id", (list(sources), window_id))
    return list(await cur.fetchall())


async def reference_scores(conn: AsyncConnection, application: str, epoch: int) -> list[dict[str, Any]]:
    """Scores of the application's reference windows of this champion period, oldest first."""
    cur = await conn.execute(
        "SELECT scores FROM llm_windows WHERE application = %s AND epoch = %s AND is_reference "
        "AND state = 'closed' ORDER BY sequence", (application, epoch))
    return [r["scores"] for r in await cur.fetchall()]


async def close_window(conn: AsyncConnection, window_id: str, *, scores: dict, reference: dict | None,
                       checks: list[dict] | None, is_reference: bool, degraded: bool | None, now: datetime) -> None:
    await conn.execute(
        "UPDATE llm_windows SET state = 'closed', scores = %s, reference = %s, checks = %s, is_reference = %s, "
        "degraded = %s, closed_at = %s WHERE window_id = %s",
        (json.dumps(scores), None if reference is None else json.dumps(reference),
         None if checks is None else json.dumps(checks), is_reference, degraded, now, window_id))


async def last_alert_at(conn: AsyncConnection, application: str) -> datetime | None:
    cur = await conn.execute("SELECT max(detected_at) AS at FROM llm_alerts WHERE application = %s", (application,))
    row = await cur.fetchone()
    return row["at"] if row else None


async def record_alert(conn: AsyncConnection, *, drift_id: str, application: str, window_id: str, now: datetime,
                       event: bytes, retrain_request_id: str, reviews: int) -> None:
    await conn.execute(
        "INSERT INTO llm_alerts (drift_id, application, window_id, detected_at, event, retrain_request_id) "
        "VALUES (%s, %s, %s, %s, %s, %s)", (drift_id, application, window_id, now, event, retrain_request_id))
    await conn.execute("UPDATE llm_windows SET drift_event_id = %s, retrain_request_id = %s, reviews = %s "
                       "WHERE window_id = %s", (drift_id, retrain_request_id, reviews, window_id))


async def insert_feedback(conn: AsyncConnection, rows: Sequence[tuple[str, str, bool, int, bool]],
                          now: datetime) -> int:
    """(feedback id, request id, negative, source, answer-only signal): stored when the request is a scored
    generation, or when the feedback can only be about an answer (a correction, an answer label); the rest is
    other models' feedback. A feedback id stored already is skipped. Returns how many were stored."""
    cur = await conn.execute(
        "INSERT INTO llm_feedback (feedback_id, request_id, negative, source, received_at) "
        "SELECT f, r, n, s, %s FROM unnest(%s::text[], %s::text[], %s::bool[], %s::smallint[], %s::bool[]) "
        "AS x(f, r, n, s, a) WHERE a OR EXISTS (SELECT 1 FROM llm_generations g WHERE g.request_id = x.r) "
        "ON CONFLICT DO NOTHING",
        (now, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
         [r[4] for r in rows]))
    return cur.rowcount


async def clean(conn: AsyncConnection, generation_ttl: Any, feedback_ttl: Any) -> None:
    """TTL janitor: generations of closed windows and old feedback."""
    await conn.execute(
        "DELETE FROM llm_generations g USING llm_windows w WHERE g.window_id = w.window_id AND w.state = 'closed' "
        "AND g.ingested_at < now() - %s", (generation_ttl,))
    await conn.execute("DELETE FROM llm_feedback WHERE received_at < now() - %s", (feedback_ttl,))


WINDOW_COLUMNS = ("window_id, application, sequence, state, model_name, model_version, generations, start_ts, "
                  "end_ts, opened_at, scores, reference, checks, is_reference, degraded, drift_event_id, "
                  "retrain_request_id, reviews, closed_at")


class LlmReadStore:
    """Windows of an application, newest first (the gRPC API's read side)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def windows(self, application: str, page_size: int, page_token: str,
                      ) -> tuple[list[dict[str, Any]], str, dict[str, Any] | None]:
        """(windows, next page token, the application's state) ; state None when it was never seen."""
        if not application:
            raise InvalidArgument("application is required")
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        size = min(page_size or 20, 500)
        try:
            offset = int(page_token) if page_token else 0
        except ValueError:
            raise InvalidArgument(f"page_token {page_token!r} is not one this server returned") from None
        async with self.db.connection() as conn:
            state = await (await conn.execute(
                "SELECT s.*, (SELECT max(detected_at) FROM llm_alerts a WHERE a.application = s.application) "
                "AS last_alert_at FROM llm_state s WHERE application = %s", (application,))).fetchone()
            cur = await conn.execute(
                f"SELECT {WINDOW_COLUMNS} FROM llm_windows WHERE application = %s "
                "ORDER BY sequence DESC OFFSET %s LIMIT %s", (application, offset, size + 1))
            rows = await cur.fetchall()
        token = str(offset + size) if len(rows) > size else ""
        return list(rows[:size]), token, state
