"""The evaluator's database: the flag labels it collects from feedback.received and the
evaluations it runs (queue, results and full reports)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from flywheel.common.db import Database
from flywheel.common.errors import NotFound
from flywheel.common.jobs import JobTable

QUEUED, RUNNING, COMPLETED = "queued", "running", "completed"
# Evaluations are the evaluator's job queue: a claim counts an attempt and keeps the first start.
EVALUATION_QUEUE = JobTable("evaluations", queued=QUEUED, running=RUNNING, issuer="evaluator",
                            on_claim="attempts = attempts + 1, started_at = coalesce(started_at, now())")


@dataclass
class EvaluationRow:
    id: str
    model_name: str
    candidate_version: int
    requested_baseline: int = 0
    baseline_version: int = 0
    trigger_event_id: str | None = None
    requested_by: str = ""
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
        """Queue an evaluation asked for by an event (workers hear of it when `conn` commits); False when
        that event already queued one."""
        cur = await conn.execute(
            "INSERT INTO evaluations (id, model_name, candidate_version, requested_baseline, trigger_event_id, status,"
            " requested_by) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (trigger_event_id) DO NOTHING RETURNING id",
            (row.id, row.model_name, row.candidate_version, row.requested_baseline, row.trigger_event_id, QUEUED,
             row.requested_by))
        if await cur.fetchone() is None:
            return False
        await EVALUATION_QUEUE.notify(conn, self.db.schema, row.id)
        return True

    async def create_running(self, row: EvaluationRow) -> EvaluationRow:
        """An evaluation executed right away by this process (the Evaluate RPC)."""
        async with self.db.connection() as conn:
            created = await (await conn.execute(
                "INSERT INTO evaluations (id, model_name, candidate_version, requested_baseline, status, attempts,"
                " started_at, requested_by) VALUES (%s, %s, %s, %s, %s, 1, now(), %s) RETURNING *",
                (row.id, row.model_name, row.candidate_version, row.requested_baseline, RUNNING,
                 row.requested_by))).fetchone()
        assert created is not None
        return EvaluationRow.from_row(created)

    async def claim_next(self) -> EvaluationRow | None:
        """Move the oldest queued evaluation to running (safe with several replicas)."""
        async with self.db.connection() as conn:
            row = await EVALUATION_QUEUE.claim_next(conn)
        return EvaluationRow.from_row(row) if row else None

    async def requeue_running(self) -> int:
        """Evaluations left running by a crash go back to the queue (nothing was emitted for them:
        completing and emitting happen in one transaction)."""
        async with self.db.connection() as conn:
            return await EVALUATION_QUEUE.requeue_interrupted(conn)

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
        async with self.db.connection() as conn:
            rows, token = await EVALUATION_QUEUE.page(conn, page_size, page_token, model_name=model_name)
        return [EvaluationRow.from_row(r) for r in rows], token
