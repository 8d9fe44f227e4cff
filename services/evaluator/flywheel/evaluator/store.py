"""The evaluator's database: the flag labels it collects from feedback.received, the evaluations it runs
(queue, results and full reports), LLM applications' golden sets and the reviewed answers of LLM traffic."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from flywheel.common.db import Database
from flywheel.common.errors import NotFound
from flywheel.common.jobs import JobTable
from flywheel.proto.events.v1 import reviews_pb2

QUEUED, RUNNING, COMPLETED = "queued", "running", "completed"
PREDICTIVE, LLM = "predictive", "llm"
APPROVED, CORRECTED = reviews_pb2.REVIEW_DECISION_APPROVED, reviews_pb2.REVIEW_DECISION_CORRECTED
# Evaluations are the evaluator's job queue: a claim counts an attempt and keeps the first start.
EVALUATION_QUEUE = JobTable("evaluations", queued=QUEUED, running=RUNNING, issuer="evaluator",
                            on_claim="attempts = attempts + 1, started_at = coalesce(started_at, now())")


def storable_json(value: object) -> str:
    """JSON that jsonb accepts: an answer quoted in a report may hold U+0000, which PostgreSQL refuses (and the
    evaluation could not complete); it is dropped."""
    return json.dumps(value).replace("\\u0000", "")


@dataclass
class EvaluationRow:
    id: str
    model_name: str
    candidate_version: int
    requested_baseline: int = 0
    baseline_version: int = 0
    trigger_event_id: str | None = None
    requested_by: str = ""
    # predictive or llm.
    kind: str = PREDICTIVE
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
class GoldenSetRow:
    application: str
    version: int
    description: str
    content_sha256: str
    yaml: str
    answerable_items: int
    refusal_items: int
    created_by: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> GoldenSetRow:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ReviewedAnswer:
    """A reviewed LLM answer: the question, and the answer a reviewer corrected or approved."""

    review_id: str
    question: str
    answer: str
    decision: int
    decided_at: datetime


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
            " requested_by, kind) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (trigger_event_id) DO NOTHING"
            " RETURNING id",
            (row.id, row.model_name, row.candidate_version, row.requested_baseline, row.trigger_event_id, QUEUED,
             row.requested_by, row.kind))
        if await cur.fetchone() is None:
            return False
        await EVALUATION_QUEUE.notify(conn, self.db.schema, row.id)
        return True

    async def create_running(self, row: EvaluationRow) -> EvaluationRow:
        """An evaluation executed right away by this process (the Evaluate RPC)."""
        async with self.db.connection() as conn:
            created = await (await conn.execute(
                "INSERT INTO evaluations (id, model_name, candidate_version, requested_baseline, status, attempts,"
                " started_at, requested_by, kind) VALUES (%s, %s, %s, %s, %s, 1, now(), %s, %s) RETURNING *",
                (row.id, row.model_name, row.candidate_version, row.requested_baseline, RUNNING,
                 row.requested_by, row.kind))).fetchone()
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
             Jsonb(row.baseline_metrics), Jsonb(row.checks), Jsonb(row.report, dumps=storable_json),
             row.data_start, row.data_end,
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

    # -- golden sets ---------------------------------------------------------------------------

    async def put_golden_set(self, application: str, description: str, sha: str, text: str, answerable: int,
                             refusal: int, created_by: str) -> tuple[GoldenSetRow, bool]:
        """Store a new version unless the newest has the same content; (the version, created)."""
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('golden_sets:' || %s))", (application,))
            newest = await (await conn.execute(
                "SELECT * FROM golden_sets WHERE application = %s ORDER BY version DESC LIMIT 1",
                (application,))).fetchone()
            if newest is not None and newest["content_sha256"] == sha:
                return GoldenSetRow.from_row(newest), False
            created = await (await conn.execute(
                "INSERT INTO golden_sets (application, version, description, content_sha256, yaml, answerable_items,"
                " refusal_items, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
                (application, (newest["version"] if newest else 0) + 1, description, sha, text, answerable, refusal,
                 created_by))).fetchone()
        assert created is not None
        return GoldenSetRow.from_row(created), True

    async def golden_set(self, application: str, version: int = 0,
                         conn: AsyncConnection | None = None) -> GoldenSetRow | None:
        """A version of an application's golden set (0 = the newest), or None."""
        query, params = ("SELECT * FROM golden_sets WHERE application = %s AND version = %s", (application, version)) \
            if version else ("SELECT * FROM golden_sets WHERE application = %s ORDER BY version DESC LIMIT 1",
                             (application,))
        if conn is not None:
            row = await (await conn.execute(query, params)).fetchone()
        else:
            async with self.db.connection() as own:
                row = await (await own.execute(query, params)).fetchone()
        return GoldenSetRow.from_row(row) if row else None

    async def golden_sets(self, application: str = "") -> list[GoldenSetRow]:
        """Every version of one application's set (newest first), or the newest of every application's."""
        async with self.db.connection() as conn:
            if application:
                rows = await (await conn.execute("SELECT * FROM golden_sets WHERE application = %s"
                                                 " ORDER BY version DESC", (application,))).fetchall()
            else:
                rows = await (await conn.execute("SELECT DISTINCT ON (application) * FROM golden_sets"
                                                 " ORDER BY application, version DESC")).fetchall()
        return [GoldenSetRow.from_row(r) for r in rows]

    # -- reviewed answers ----------------------------------------------------------------------

    async def add_review_questions(self, conn: AsyncConnection, rows: Iterable[Mapping[str, Any]]) -> None:
        """The questions and answers under review (reviews.requested); the decision may already be there."""
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO reviewed_answers (review_id, application, question, completion)"
                " VALUES (%(review_id)s, %(application)s, %(question)s, %(completion)s) ON CONFLICT (review_id) DO"
                " UPDATE SET application = EXCLUDED.application, question = EXCLUDED.question,"
                " completion = EXCLUDED.completion", list(rows))

    async def add_review_decisions(self, conn: AsyncConnection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Reviewers' decisions (reviews.completed); the question may come later."""
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO reviewed_answers (review_id, decision, corrected, decided_at)"
                " VALUES (%(review_id)s, %(decision)s, %(corrected)s, %(decided_at)s) ON CONFLICT (review_id) DO"
                " UPDATE SET decision = EXCLUDED.decision, corrected = EXCLUDED.corrected,"
                " decided_at = EXCLUDED.decided_at", list(rows))

    async def reviewed_answers(self, application: str, since: datetime, decided_before: datetime,
                               limit: int) -> list[ReviewedAnswer]:
        """The `limit` most recent corrected or approved answers of `application` decided in
        [since, decided_before), oldest first; a correction's answer is the reviewer's, an approval's the original."""
        if limit <= 0:
            return []
        async with self.db.connection() as conn:
            rows = await (await conn.execute(
                "SELECT review_id, question, decision, decided_at, CASE WHEN decision = %s THEN corrected"
                " ELSE completion END AS answer FROM reviewed_answers WHERE application = %s AND question <> ''"
                " AND decided_at >= %s AND decided_at < %s AND ((decision = %s AND corrected <> '')"
                " OR (decision = %s AND completion <> '')) ORDER BY decided_at DESC, review_id LIMIT %s",
                (CORRECTED, application, since, decided_before, CORRECTED, APPROVED, limit))).fetchall()
        return [ReviewedAnswer(r["review_id"], r["question"], r["answer"], r["decision"], r["decided_at"])
                for r in reversed(rows)]
