"""The fine-tuner's database: answers under review and reviewers' decisions, the examples they make,
snapshots of an application's examples, runs (its job queue) and the retrain requests it received."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from flywheel.common.db import Database
from flywheel.common.errors import NotFound
from flywheel.common.jobs import JobTable
from flywheel.finetuner.dataset import (
    APPROVAL,
    CORRECTION,
    TEACHER,
    Decision,
    DistillItem,
    ExampleRow,
    ReviewItem,
    TeacherAnswer,
)
from flywheel.proto.finetuner.v1 import finetuner_service_pb2 as pb

QUEUED = pb.RUN_STATUS_QUEUED
RUNNING = pb.RUN_STATUS_RUNNING
SUCCEEDED = pb.RUN_STATUS_SUCCEEDED
FAILED = pb.RUN_STATUS_FAILED
ACTIVE = (QUEUED, RUNNING)
# Runs are the fine-tuner's job queue: claiming one also records the attempt.
RUN_QUEUE = JobTable("runs", queued=QUEUED, running=RUNNING, issuer="fine-tuner",
                     on_claim="started_at = coalesce(started_at, now()), updated_at = now(), stage = 'starting', "
                              "attempts = attempts + 1")

# What became of a decision.
PENDING, EXAMPLE, DUPLICATE, REJECTED, UNUSABLE = "pending", "example", "duplicate", "rejected", "unusable"


@dataclass
class Run:
    id: str
    application: str
    status: int
    model_name: str = ""
    base_name: str = ""
    base_version: int = 0
    parent_version: int = 0
    settings: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    dataset_snapshot_id: str = ""
    train_examples: int = 0
    eval_examples: int = 0
    reviews: int = 0
    reason: int = 0
    retrain_request_id: str = ""
    drift_event_id: str = ""
    requested_by: str = ""
    code_version: str = ""
    failure_reason: str = ""
    registered_version: int = 0
    step: int = 0
    total_steps: int = 0
    checkpoint_step: int = 0
    resumed_from_step: int = 0
    attempts: int = 0
    coalesced_requests: int = 0
    stage: str = ""
    progress: float = 0.0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in (SUCCEEDED, FAILED)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Run:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


@dataclass
class StoredExample:
    id: int
    key: str
    kind: str
    messages: list[tuple[str, str]]
    prompt: str
    target: str
    review_id: str
    duplicates: int
    decided_at: datetime
    split: str = ""


@dataclass
class DatasetStats:
    application: str
    examples: int = 0
    corrections: int = 0
    approvals: int = 0
    duplicates: int = 0
    redactions: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None


def _example(row: Mapping[str, Any]) -> StoredExample:
    return StoredExample(id=row["id"], key=row["example_key"], kind=row["kind"],
                         messages=[(r, c) for r, c in row["messages"]], prompt=row["prompt"], target=row["target"],
                         review_id=row["review_id"], duplicates=row["duplicates"], decided_at=row["decided_at"],
                         split=row.get("split") or "")


class FinetunerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reviews -> examples ---------------------------------------------------------------------

    @staticmethod
    async def lock_reviews(conn: AsyncConnection, review_ids: Sequence[str]) -> None:
        """Serialize the item and the decision of one review (they arrive on two topics, in either order,
        possibly in concurrent transactions): whichever commits second sees the other."""
        keys = [f"flywheel.finetuner.review.{r}" for r in sorted(set(review_ids))]  # one order: no deadlocks
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(k)) FROM unnest(%s::text[])"
                           " WITH ORDINALITY AS t(k, i) ORDER BY i", (keys,))

    @staticmethod
    async def add_items(conn: AsyncConnection, items: Sequence[ReviewItem]) -> None:
        if not items:
            return
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO review_items (review_id, request_id, application, model_name, model_version, messages,"
                " prompt, completion, redactions) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (review_id) DO NOTHING",
                [(i.review_id, i.request_id, i.application, i.model_name, i.model_version,
                  Jsonb([list(m) for m in i.messages]), i.prompt, i.completion, Jsonb(dict(i.redactions)))
                 for i in items])

    @staticmethod
    async def add_decisions(conn: AsyncConnection, decisions: Sequence[Decision]) -> None:
        """Record decisions; a review decided before keeps its first decision."""
        if not decisions:
            return
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO review_decisions (review_id, request_id, decision, corrected, reviewer, completed_at,"
                " redactions) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (review_id) DO NOTHING",
                [(d.review_id, d.request_id, d.decision, d.corrected, d.reviewer, d.completed_at,
                  Jsonb(dict(d.redactions))) for d in decisions])

    @staticmethod
    async def ready_to_join(conn: AsyncConnection, review_ids: Sequence[str]) -> list[tuple[ReviewItem, Decision]]:
        """(item, decision) of the given reviews whose decision is pending and whose item has arrived."""
        rows = await (await conn.execute(
            "SELECT i.review_id, i.request_id, i.application, i.model_name, i.model_version, i.messages, i.prompt,"
            " i.completion, d.decision, d.corrected, d.reviewer, d.completed_at FROM review_decisions d"
            " JOIN review_items i USING (review_id) WHERE d.review_id = ANY(%s) AND d.outcome = 'pending'",
            (list(review_ids),))).fetchall()
        return [(ReviewItem(r["review_id"], r["request_id"], r["application"], r["model_name"], r["model_version"],
                            [(role, text) for role, text in r["messages"]], r["prompt"], r["completion"]),
                 Decision(r["review_id"], r["request_id"], r["decision"], r["corrected"], r["reviewer"],
                          r["completed_at"])) for r in rows]

    @staticmethod
    async def add_example(conn: AsyncConnection, row: ExampleRow) -> tuple[int, bool]:
        """Insert an example; an equal one (same dedup key) counts a duplicate instead. (id, new)."""
        found = await (await conn.execute(
            "INSERT INTO examples (application, example_key, kind, messages, prompt, target, review_id, model_name,"
            " model_version, decided_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (application, example_key) DO UPDATE SET duplicates = examples.duplicates + 1"
            " RETURNING id, (xmax = 0) AS inserted",
            (row.application, row.key, row.kind, Jsonb([list(m) for m in row.messages]), row.prompt, row.target,
             row.review_id, row.model_name, row.model_version, row.decided_at))).fetchone()
        assert found is not None
        return found["id"], bool(found["inserted"])

    @staticmethod
    async def set_outcome(conn: AsyncConnection, review_id: str, outcome: str, application: str,
                          example_id: int | None = None) -> None:
        await conn.execute("UPDATE review_decisions SET outcome = %s, application = %s, example_id = %s"
                           " WHERE review_id = %s", (outcome, application, example_id, review_id))

    @staticmethod
    async def new_corrections(conn: AsyncConnection, application: str) -> int:
        """Corrections added after the newest LoRA run's data cutoff (all of them before the first run); a
        distillation run does not count: its student is not an adapter of what the corrections were about."""
        row = await (await conn.execute(
            "SELECT count(*) AS n FROM examples WHERE application = %s AND kind = %s AND created_at >"
            " coalesce((SELECT max(data_cutoff) FROM runs WHERE application = %s AND"
            " coalesce(settings->>'mode', 'lora') <> 'distill'), '-infinity')",
            (application, CORRECTION, application))).fetchone()
        assert row is not None
        return int(row["n"])

    async def has_examples(self, application: str, conn: AsyncConnection | None = None) -> bool:
        """Whether the application has an example (seen from `conn`'s transaction when given)."""
        async with contextlib.AsyncExitStack() as stack:
            if conn is None:
                conn = await stack.enter_async_context(self.db.connection())
            row = await (await conn.execute("SELECT 1 FROM examples WHERE application = %s LIMIT 1",
                                            (application,))).fetchone()
        return row is not None

    async def latest_model(self, application: str) -> str:
        """The model that answered the application's newest reviewed example, else its newest logged answer
        kept for distillation ('' when none names one)."""
        async with self.db.connection() as conn:
            row = await (await conn.execute(
                "SELECT model_name FROM examples WHERE application = %s AND model_name <> ''"
                " ORDER BY decided_at DESC, id DESC LIMIT 1", (application,))).fetchone()
            if row is None:
                row = await (await conn.execute(
                    "SELECT model_name FROM teacher_answers WHERE application = %s AND model_name <> ''"
                    " ORDER BY logged_at DESC, request_id DESC LIMIT 1", (application,))).fetchone()
        return row["model_name"] if row else ""

    # -- datasets and snapshots ------------------------------------------------------------------

    async def examples(self, application: str, created_until: datetime | None = None) -> list[StoredExample]:
        """The application's examples (created up to `created_until`), oldest decision first."""
        async with self.db.connection() as conn:
            rows = await (await conn.execute(
                "SELECT * FROM examples WHERE application = %s AND created_at <= %s ORDER BY decided_at, id",
                (application, created_until or datetime.max.replace(tzinfo=UTC)))).fetchall()
        return [_example(r) for r in rows]

    async def save_snapshot(self, snapshot_id: str, application: str, splits: Sequence[tuple[StoredExample, str]],
                            ) -> None:
        """Record a snapshot once (the same content has the same id)."""
        corrections = sum(1 for e, _ in splits if e.kind == CORRECTION)
        async with self.db.connection() as conn, conn.transaction():
            inserted = await (await conn.execute(
                "INSERT INTO snapshots (id, application, train_examples, eval_examples, corrections, approvals,"
                " reviews) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                (snapshot_id, application, sum(1 for _, s in splits if s == "train"),
                 sum(1 for _, s in splits if s == "eval"), corrections, len(splits) - corrections,
                 sum(1 + e.duplicates for e, _ in splits)))).fetchone()
            if inserted is None:
                return
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO snapshot_examples (snapshot_id, example_id, split, position) VALUES (%s, %s, %s, %s)",
                    [(snapshot_id, e.id, s, i) for i, (e, s) in enumerate(splits)])

    async def snapshot(self, snapshot_id: str) -> tuple[dict[str, Any], list[StoredExample]]:
        """A snapshot's row and its examples (with their split) in order; NotFound for an unknown id."""
        async with self.db.connection() as conn:
            head = await (await conn.execute("SELECT * FROM snapshots WHERE id = %s", (snapshot_id,))).fetchone()
            if head is None:
                raise NotFound(f"no dataset snapshot {snapshot_id!r}")
            rows = await (await conn.execute(
                "SELECT e.*, s.split FROM snapshot_examples s JOIN examples e ON e.id = s.example_id"
                " WHERE s.snapshot_id = %s ORDER BY s.position", (snapshot_id,))).fetchall()
        return dict(head), [_example(r) for r in rows]

    async def dataset_stats(self, application: str) -> DatasetStats:
        stats = DatasetStats(application)
        async with self.db.connection() as conn:
            row = await (await conn.execute(
                "SELECT count(*) AS examples, count(*) FILTER (WHERE kind = %s) AS corrections,"
                " count(*) FILTER (WHERE kind = %s) AS approvals, coalesce(sum(duplicates), 0) AS duplicates,"
                " min(decided_at) AS first_at, max(decided_at) AS last_at FROM examples WHERE application = %s",
                (CORRECTION, APPROVAL, application))).fetchone()
            assert row is not None
            stats.examples, stats.corrections, stats.approvals = row["examples"], row["corrections"], row["approvals"]
            stats.duplicates, stats.first_at, stats.last_at = int(row["duplicates"]), row["first_at"], row["last_at"]
            for row in await (await conn.execute(
                    "SELECT redactions FROM review_items WHERE application = %s AND redactions <> '{}'"
                    " UNION ALL SELECT redactions FROM review_decisions WHERE application = %s"
                    " AND redactions <> '{}'", (application, application))).fetchall():
                stats.redactions.update(row["redactions"])
            counts = await (await conn.execute(
                "SELECT count(*) AS rejected FROM review_decisions WHERE application = %s"
                " AND outcome IN ('rejected', 'unusable')", (application,))).fetchone()
            assert counts is not None
            stats.rejected = counts["rejected"]
        return stats

    async def now(self) -> datetime:
        """The database's clock (every stored time comes from it)."""
        async with self.db.connection() as conn:
            row = await (await conn.execute("SELECT now() AS now")).fetchone()
        assert row is not None
        return row["now"]

    async def pending_decisions(self) -> int:
        """Decisions whose answer has not arrived (of any application: their application is not known yet)."""
        async with self.db.connection() as conn:
            row = await (await conn.execute("SELECT count(*) AS n FROM review_decisions WHERE outcome = 'pending'"
                                            )).fetchone()
        assert row is not None
        return int(row["n"])

    async def prune(self, older_than: datetime) -> int:
        """Forget items never decided and decisions never matched that arrived before `older_than`."""
        async with self.db.connection() as conn:
            a = await conn.execute(
                "DELETE FROM review_items i WHERE received_at < %s AND NOT EXISTS"
                " (SELECT 1 FROM review_decisions d WHERE d.review_id = i.review_id)", (older_than,))
            b = await conn.execute("DELETE FROM review_decisions WHERE outcome = 'pending' AND received_at < %s",
                                   (older_than,))
        return a.rowcount + b.rowcount

    # -- distillation: the champion's logged answers ----------------------------------------------

    @staticmethod
    async def add_teacher_answers(conn: AsyncConnection, answers: Sequence[TeacherAnswer], keep: int) -> int:
        """Store answers (a request seen before is ignored), then drop each application's oldest beyond `keep`.
        Returns how many were new."""
        if not answers:
            return 0
        new = 0
        for a in answers:
            cur = await conn.execute(
                "INSERT INTO teacher_answers (application, request_id, model_name, model_version, messages, prompt,"
                " completion, question_key, redactions, logged_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (application, request_id) DO NOTHING",
                (a.application, a.request_id, a.model_name, a.model_version, Jsonb([list(m) for m in a.messages]),
                 a.prompt, a.completion, a.question_key, Jsonb(dict(a.redactions)), a.logged_at))
            new += cur.rowcount
        for application in sorted({a.application for a in answers}):
            await conn.execute(
                "DELETE FROM teacher_answers WHERE application = %s AND (logged_at, request_id) <"
                " (SELECT logged_at, request_id FROM teacher_answers WHERE application = %s"
                " ORDER BY logged_at DESC, request_id DESC OFFSET %s LIMIT 1)", (application, application, keep - 1))
        return new

    async def teacher_answers(self, application: str, model_name: str, model_version: int,
                              received_until: datetime | None = None) -> list[DistillItem]:
        """The answers of one model version for an application (received up to `received_until`), oldest first."""
        async with self.db.connection() as conn:
            rows = await (await conn.execute(
                "SELECT request_id, messages, prompt, completion, logged_at FROM teacher_answers WHERE application = %s"
                " AND model_name = %s AND model_version = %s AND received_at <= %s ORDER BY logged_at, request_id",
                (application, model_name, model_version,
                 received_until or datetime.max.replace(tzinfo=UTC)))).fetchall()
        return [DistillItem(TEACHER, r["request_id"], [(role, text) for role, text in r["messages"]], r["prompt"],
                            r["completion"], r["logged_at"]) for r in rows]

    async def teacher_answer_counts(self, application: str,
                                    conn: AsyncConnection | None = None) -> dict[tuple[str, int], int]:
        """How many answers are kept for the application, by (model, version) (seen from `conn` when given)."""
        async with contextlib.AsyncExitStack() as stack:
            if conn is None:
                conn = await stack.enter_async_context(self.db.connection())
            rows = await (await conn.execute(
                "SELECT model_name, model_version, count(*) AS n FROM teacher_answers WHERE application = %s"
                " GROUP BY model_name, model_version", (application,))).fetchall()
        return {(r["model_name"], r["model_version"]): int(r["n"]) for r in rows}

    async def save_distill_snapshot(self, snapshot_id: str, application: str,
                                    items: Sequence[tuple[DistillItem, str]],
                                    reviewed: Sequence[tuple[StoredExample, str]]) -> None:
        """Record a distillation snapshot once: its head, the reviewed examples in it (GetDataset lists their
        reviews) and every item, copied (the teacher_answers table is bounded)."""
        corrections = sum(1 for i, _ in items if i.source == CORRECTION)
        approvals = sum(1 for i, _ in items if i.source == APPROVAL)
        async with self.db.connection() as conn, conn.transaction():
            inserted = await (await conn.execute(
                "INSERT INTO snapshots (id, application, train_examples, eval_examples, corrections, approvals,"
                " reviews) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                (snapshot_id, application, sum(1 for _, s in items if s == "train"),
                 sum(1 for _, s in items if s == "eval"), corrections, approvals,
                 sum(1 + e.duplicates for e, _ in reviewed)))).fetchone()
            if inserted is None:
                return
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO snapshot_examples (snapshot_id, example_id, split, position) VALUES (%s, %s, %s, %s)",
                    [(snapshot_id, e.id, s, i) for i, (e, s) in enumerate(reviewed)])
                await cur.executemany(
                    "INSERT INTO distill_snapshot_items (snapshot_id, position, source, ref, messages, prompt, target,"
                    " split, at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(snapshot_id, n, i.source, i.ref, Jsonb([list(m) for m in i.messages]), i.prompt, i.target, s,
                      i.at) for n, (i, s) in enumerate(items)])

    async def distill_snapshot(self, snapshot_id: str) -> list[tuple[DistillItem, str]]:
        async with self.db.connection() as conn:
            rows = await (await conn.execute(
                "SELECT * FROM distill_snapshot_items WHERE snapshot_id = %s ORDER BY position",
                (snapshot_id,))).fetchall()
        return [(DistillItem(r["source"], r["ref"], [(role, text) for role, text in r["messages"]], r["prompt"],
                             r["target"], r["at"]), r["split"]) for r in rows]

    # -- runs ------------------------------------------------------------------------------------

    async def create_or_join(self, conn: AsyncConnection, run: Run) -> tuple[Run, bool]:
        """Queue `run` unless a run of its application is queued or running: then that one counts one more
        coalesced request and is returned (joined=True). Serialized per application by an advisory lock; the
        partial unique index `runs_one_active_per_application` backs the rule up."""
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                           (f"flywheel.finetuner.run.{run.application}",))
        row = await (await conn.execute(
            "UPDATE runs SET coalesced_requests = coalesced_requests + 1, updated_at = now()"
            " WHERE application = %s AND status IN (%s, %s) RETURNING *", (run.application, *ACTIVE))).fetchone()
        if row is not None:
            return Run.from_row(row), True
        row = await (await conn.execute(
            "INSERT INTO runs (id, application, status, settings, reason, retrain_request_id, drift_event_id,"
            " requested_by, code_version, parent_version, stage) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " 'queued') RETURNING *",
            (run.id, run.application, QUEUED, Jsonb(run.settings), run.reason, run.retrain_request_id,
             run.drift_event_id, run.requested_by, run.code_version, run.parent_version))).fetchone()
        await RUN_QUEUE.notify(conn, self.db.schema, run.id)
        assert row is not None
        return Run.from_row(row), False

    @staticmethod
    async def active_run(conn: AsyncConnection, application: str) -> bool:
        row = await (await conn.execute("SELECT 1 FROM runs WHERE application = %s AND status IN (%s, %s)",
                                        (application, *ACTIVE))).fetchone()
        return row is not None

    @staticmethod
    async def is_new_request(conn: AsyncConnection, request_id: str) -> bool:
        row = await (await conn.execute(
            "SELECT 1 FROM retrain_requests WHERE request_id = %s UNION ALL"
            " SELECT 1 FROM waiting_requests WHERE request_id = %s", (request_id, request_id))).fetchone()
        return row is None

    @staticmethod
    async def add_waiting(conn: AsyncConnection, request_id: str, application: str, settings: dict[str, str],
                          reason: int, drift_event_id: str, parent_version: int, requested_by: str) -> None:
        await conn.execute(
            "INSERT INTO waiting_requests (request_id, application, settings, reason, drift_event_id, parent_version,"
            " requested_by) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (request_id) DO NOTHING",
            (request_id, application, Jsonb(settings), reason, drift_event_id, parent_version, requested_by))

    @staticmethod
    async def waiting(conn: AsyncConnection) -> list[dict[str, Any]]:
        """Every waiting request, locked (a concurrent consumer skips them), per application oldest first."""
        return await (await conn.execute(
            "SELECT * FROM waiting_requests ORDER BY application, received_at, request_id"
            " FOR UPDATE SKIP LOCKED")).fetchall()

    @staticmethod
    async def drop_waiting(conn: AsyncConnection, request_ids: list[str]) -> None:
        await conn.execute("DELETE FROM waiting_requests WHERE request_id = ANY(%s)", (request_ids,))

    @staticmethod
    async def link_request(conn: AsyncConnection, request_id: str, application: str, run_id: str,
                           coalesced: bool) -> None:
        await conn.execute(
            "INSERT INTO retrain_requests (request_id, application, run_id, coalesced) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (request_id) DO NOTHING", (request_id, application, run_id, coalesced))

    async def get(self, run_id: str) -> Run:
        async with self.db.connection() as conn:
            row = await (await conn.execute("SELECT * FROM runs WHERE id = %s", (run_id,))).fetchone()
        if row is None:
            raise NotFound(f"no fine-tuning run {run_id!r}")
        return Run.from_row(row)

    async def latest_run(self, application: str) -> Run | None:
        async with self.db.connection() as conn:
            row = await (await conn.execute(
                "SELECT * FROM runs WHERE application = %s ORDER BY created_at DESC, id DESC LIMIT 1",
                (application,))).fetchone()
        return Run.from_row(row) if row else None

    async def list(self, application: str, page_size: int, page_token: str) -> tuple[list[Run], str]:
        async with self.db.connection() as conn:
            rows, token = await RUN_QUEUE.page(conn, page_size, page_token, application=application)
        return [Run.from_row(r) for r in rows], token

    async def claim_next(self) -> Run | None:
        async with self.db.connection() as conn:
            row = await RUN_QUEUE.claim_next(conn)
        return Run.from_row(row) if row else None

    async def update(self, run_id: str, **values: Any) -> None:
        """Set columns of a run (jsonb columns take dicts/lists)."""
        columns = list(values)
        args = [Jsonb(v) if isinstance(v, dict | list) else v for v in values.values()]
        assignments = ", ".join(f"{c} = %s" for c in columns)
        async with self.db.connection() as conn:
            await conn.execute(f"UPDATE runs SET {assignments}, updated_at = now() WHERE id = %s", (*args, run_id))

    async def finish(self, run_id: str, status: int, **values: Any) -> None:
        await self.update(run_id, status=status, finished_at=datetime.now(UTC), **values)

    async def requeue(self, run_id: str, stage: str) -> None:
        """Put an interrupted run back in the queue (it resumes from its newest checkpoint)."""
        async with self.db.connection() as conn:
            await conn.execute("UPDATE runs SET status = %s, stage = %s, updated_at = now() WHERE id = %s"
                               " AND status = %s", (QUEUED, stage, run_id, RUNNING))
            await RUN_QUEUE.notify(conn, self.db.schema, run_id)

    async def running(self) -> list[Run]:
        """Runs left RUNNING (by a crash: called before this process schedules any)."""
        async with self.db.connection() as conn:
            return [Run.from_row(r) for r in await RUN_QUEUE.interrupted(conn)]
