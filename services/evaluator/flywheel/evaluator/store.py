"""The evaluator's database: the flag labels it collects from feedback.received and the
evaluations it runs (queue, results and full reports)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from flywheel.common.db import Database
from flywheel.common.errors import InvalidArgument, NotFound

QUEUED, RUNNING, COMPLETED = "queued", "running", "completed"
MAX_PAGE = 500
DEFAULT_PAGE = 50


@dataclass
class EvaluationRow:
    id: str
    model_name: str
    candidate_version: int
    requested_baseline: int = 0
    baseline_version: int = 0
    trigger_event_id: str | None = None
    status: str = QUEUED
    verdict: int = 0
    error: str = ""
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    data_start: datetime | None = None
    data_end: datetime | None = None
    rows: int = 0
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EvaluationRow:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Label:
    label_key: str
    entity_keys: dict[str, str]
    event_time: datetime
    observed_at: datetime
    flag: bool


def _page_token(row: EvaluationRow) -> str:
    assert row.created_at is not None
    return base64.urlsafe_b64encode(json.dumps({"created_at": row.created_at.isoformat(),
                                                "id": row.id}).encode()).decode()


def _parse_page_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return datetime.fromisoformat(data["created_at"]), str(data["id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"page_token {token!r} is not a token this evaluator issued") from exc


class EvaluatorStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- labels --------------------------------------------------------------------------------

    async def upsert_labels(self, conn: AsyncConnection, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert labels; for an existing (label_key, source) the one observed last wins."""
        latest: dict[tuple[str, int], Mapping[str, Any]] = {}
        for row in rows:  # one statement cannot update a row twice: keep the latest per key
            key = (row["label_key"], row["source"])
            if key not in latest or row["observed_at"] >= latest[key]["observed_at"]:
                latest[key] = row
        if not latest:
            return 0
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO labels (label_key, source, feedback_id, flag, entity_keys, event_time, observed_at)"
                " VALUES (%(label_key)s, %(source)s, %(feedback_id)s, %(flag)s, %(entity_keys)s, %(event_time)s,"
                " %(observed_at)s) ON CONFLICT (label_key, source) DO UPDATE SET feedback_id = EXCLUDED.feedback_id,"
                " flag = EXCLUDED.flag, entity_keys = EXCLUDED.entity_keys, event_time = EXCLUDED.event_time,"
                " observed_at = EXCLUDED.observed_at, received_at = now()"
                " WHERE labels.observed_at <= EXCLUDED.observed_at",
                [{**row, "entity_keys": Jsonb(dict(row["entity_keys"]))} for row in latest.values()])
        return len(latest)

    async def recent_labels(self, source: int, keys: list[str], start: datetime | None, observed_before: datetime,
                            limit: int) -> list[Label]:
        """The `limit` most recent labels of `source` carrying every key in `keys`, with event time >= `start`
        (when given) and known before `observed_before`; oldest first."""
        where = ["source = %s", "observed_at < %s", "entity_keys ?& %s"]
        params: list[Any] = [source, observed_before, keys]
        if start is not None:
            where.append("event_time >= %s")
            params.append(start)
        async with self.db.connection() as conn:
            rows = await (await conn.execute(
                f"SELECT label_key, entity_keys, event_time, observed_at, flag FROM labels WHERE {' AND '.join(where)}"
                " ORDER BY event_time DESC, label_key DESC LIMIT %s", (*params, limit))).fetchall()
        return [Label(r["label_key"], r["entity_keys"], r["event_time"], r["observed_at"], r["flag"])
                for r in reversed(rows)]

    async def newest_event_time(self, source: int, observed_before: datetime) -> datetime | None:
        async with self.db.connection() as conn:
            row = await (await conn.execute(
                "SELECT max(event_time) AS t FROM labels WHERE source = %s AND observed_at < %s",
                (source, observed_before))).fetchone()
        return row["t"] if row else None

    # -- evaluations ---------------------------------------------------------------------------

    async def queue(self, conn: AsyncConnection, row: EvaluationRow) -> bool:
        """Queue an evaluation asked for by an event; False when that event already queued one."""
        cur = await conn.execute(
            "INSERT INTO evaluations (id, model_name, candidate_version, requested_baseline, trigger_event_id, status)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (trigger_event_id) DO NOTHING RETURNING id",
            (row.id, row.model_name, row.candidate_version, row.requested_baseline, row.trigger_event_id, QUEUED))
        return await cur.fetchone() is not None

    async def create_running(self, row: EvaluationRow) -> EvaluationRow:
        """An evaluation executed right away by this process (the Evaluate RPC)."""
        async with self.db.connection() as conn:
            created = await (await conn.execute(
                "INSERT INTO evaluations (id, model_name, candidate_version, requested_baseline, status, attempts,"
                " started_at) VALUES (%s, %s, %s, %s, %s, 1, now()) RETURNING *",
                (row.id, row.model_name, row.candidate_version, row.requested_baseline, RUNNING))).fetchone()
        assert created is not None
        return EvaluationRow.from_row(created)

    async def claim_next(self) -> EvaluationRow | None:
        """Move the oldest queued evaluation to running (safe with several replicas)."""
        async with self.db.connection() as conn:
            row = await (await conn.execute(
                "UPDATE evaluations SET status = %s, attempts = attempts + 1, started_at = coalesce(started_at, now())"
                " WHERE id = (SELECT id FROM evaluations WHERE status = %s ORDER BY created_at, id"
                " FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING *", (RUNNING, QUEUED))).fetchone()
        return EvaluationRow.from_row(row) if row else None

    async def requeue_running(self) -> int:
        """Evaluations left running by a crash go back to the queue (nothing was emitted for them:
        completing and emitting happen in one transaction)."""
        async with self.db.connection() as conn:
            cur = await conn.execute("UPDATE evaluations SET status = %s WHERE status = %s", (QUEUED, RUNNING))
            return cur.rowcount

    async def complete(self, conn: AsyncConnection, row: EvaluationRow) -> None:
        await conn.execute(
            "UPDATE evaluations SET status = %s, verdict = %s, error = %s, baseline_version = %s,"
            " candidate_metrics = %s, baseline_metrics = %s, checks = %s, report = %s, data_start = %s,"
            " data_end = %s, rows = %s, completed_at = %s WHERE id = %s",
            (COMPLETED, row.verdict, row.error, row.baseline_version, Jsonb(row.candidate_metrics),
             Jsonb(row.baseline_metrics), Jsonb(row.checks), Jsonb(row.report), row.data_start, row.data_end,
             row.rows, row.completed_at, row.id))

    async def get(self, evaluation_id: str) -> EvaluationRow:
        async with self.db.connection() as conn:
            row = await (await conn.execute("SELECT * FROM evaluations WHERE id = %s", (evaluation_id,))).fetchone()
        if row is None:
            raise NotFound(f"no evaluation {evaluation_id!r}")
        return EvaluationRow.from_row(row)

    async def list(self, model_name: str, page_size: int, page_token: str) -> tuple[list[EvaluationRow], str]:
        if page_size < 0:
            raise InvalidArgument(f"page_size must not be negative, got {page_size}")
        size = min(page_size or DEFAULT_PAGE, MAX_PAGE)
        where, params = ["TRUE"], []
        if model_name:
            where.append("model_name = %s")
            params.append(model_name)
        after = _parse_page_token(page_token)
        if after is not None:
            where.append("(created_at, id) < (%s, %s)")
            params += list(after)
        async with self.db.connection() as conn:
            rows = await (await conn.execute(
                f"SELECT * FROM evaluations WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT %s",
                (*params, size + 1))).fetchall()
        page = [EvaluationRow.from_row(r) for r in rows[:size]]
        return page, (_page_token(page[-1]) if len(rows) > size else "")
