"""The trainer's database: its runs (experiment tracking), the retrain requests it
received, and the labels it collects from feedback.received."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from flywheel.common.db import Database
from flywheel.common.errors import NotFound
from flywheel.common.jobs import JobTable
from flywheel.proto.trainer.v1 import trainer_service_pb2 as pb

QUEUED = pb.RUN_STATUS_QUEUED
RUNNING = pb.RUN_STATUS_RUNNING
SUCCEEDED = pb.RUN_STATUS_SUCCEEDED
FAILED = pb.RUN_STATUS_FAILED
ACTIVE = (QUEUED, RUNNING)
# Runs are the trainer's job queue: claiming one also records when it started.
RUN_QUEUE = JobTable("runs", queued=QUEUED, running=RUNNING, issuer="trainer",
                on_claim="started_at = now(), updated_at = now(), stage = 'starting'")


@dataclass
class Run:
    id: str
    model_name: str
    status: int
    window_start: datetime
    window_end: datetime
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    dataset_snapshot_id: str = ""
    feature_names: list[str] = field(default_factory=list)
    code_version: str = ""
    requested_by: str = ""
    failure_reason: str = ""
    registered_version: int = 0
    reason: int = 0
    retrain_request_id: str = ""
    drift_event_id: str = ""
    parent_version: int = 0
    label_rows: int = 0
    train_rows: int = 0
    validation_rows: int = 0
    test_rows: int = 0
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


@dataclass(frozen=True)
class LabelRow:
    """A usable label of a run: the judged row's keys, its event time and the flag."""

    label_key: str
    entity_keys: dict[str, str]
    event_time: datetime
    observed_at: datetime
    flag: bool


class TrainerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- runs ----------------------------------------------------------------------------------

    async def create_or_join(self, conn: AsyncConnection, run: Run) -> tuple[Run, bool]:
        """Queue `run` unless a run of its model is queued or running: then return that one (joined=True).

        Serialized per model by a transaction-scoped advisory lock; the partial unique index
        `runs_one_active_per_model` backs the rule up.
        """
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"flywheel.trainer.run.{run.model_name}",))
        row = await (await conn.execute(
            "SELECT * FROM runs WHERE model_name = %s AND status IN (%s, %s)",
            (run.model_name, *ACTIVE))).fetchone()
        if row is not None:
            return Run.from_row(row), True
        row = await (await conn.execute(
            "INSERT INTO runs (id, model_name, status, window_start, window_end, params, reason, retrain_request_id,"
            " drift_event_id, parent_version, code_version, requested_by, stage) VALUES (%s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s, %s, %s, 'queued') RETURNING *",
            (run.id, run.model_name, QUEUED, run.window_start, run.window_end, Jsonb(run.params), run.reason,
             run.retrain_request_id, run.drift_event_id, run.parent_version, run.code_version,
             run.requested_by))).fetchone()
        await RUN_QUEUE.notify(conn, self.db.schema, run.id)
        assert row is not None
        return Run.from_row(row), False

    async def is_new_request(self, conn: AsyncConnection, request_id: str) -> bool:
        """Whether this retrain request is new (False: it was seen before, under another event id)."""
        row = await (await conn.execute("SELECT 1 FROM retrain_requests WHERE request_id = %s",
                                        (request_id,))).fetchone()
        return row is None

    async def link_request(self, conn: AsyncConnection, request_id: str, model_name: str, run_id: str,
                           coalesced: bool) -> None:
        await conn.execute(
            "INSERT INTO retrain_requests (request_id, model_name, run_id, coalesced) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (request_id) DO NOTHING", (request_id, model_name, run_id, coalesced))

    async def get(self, run_id: str) -> Run:
        async with self.db.connection() as conn:
            row = await (await conn.execute("SELECT * FROM runs WHERE id = %s", (run_id,))).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return Run.from_row(row)

    async def list(self, model_name: str, page_size: int, page_token: str) -> tuple[list[Run], str]:
        async with self.db.connection() as conn:
            rows, token = await RUN_QUEUE.page(conn, page_size, page_token, model_name=model_name)
        return [Run.from_row(r) for r in rows], token

    async def claim_next(self) -> Run | None:
        """Move the oldest queued run to RUNNING and return it (safe with several schedulers)."""
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

    async def running(self) -> list[Run]:
        """Runs left RUNNING (by a crash: called before this process schedules any)."""
        async with self.db.connection() as conn:
            return [Run.from_row(r) for r in await RUN_QUEUE.interrupted(conn)]

    # -- labels --------------------------------------------------------------------------------

    async def upsert_labels(self, conn: AsyncConnection, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert labels; for an existing (label_key, source), the one observed last wins."""
        latest: dict[tuple[str, int], Mapping[str, Any]] = {}
        for row in rows:  # one statement cannot update a row twice: keep the latest per key
            key = (row["label_key"], row["source"])
            if key not in latest or row["observed_at"] >= latest[key]["observed_at"]:
                latest[key] = row
        if not latest:
            return 0
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO labels (label_key, source, feedback_id, request_id, entity_id, value_kind, flag, number,"
                " text, entity_keys, event_time, observed_at) VALUES (%(label_key)s, %(source)s, %(feedback_id)s,"
                " %(request_id)s, %(entity_id)s, %(value_kind)s, %(flag)s, %(number)s, %(text)s, %(entity_keys)s,"
                " %(event_time)s, %(observed_at)s) ON CONFLICT (label_key, source) DO UPDATE SET"
                " feedback_id = EXCLUDED.feedback_id, request_id = EXCLUDED.request_id,"
                " entity_id = EXCLUDED.entity_id, value_kind = EXCLUDED.value_kind, flag = EXCLUDED.flag,"
                " number = EXCLUDED.number, text = EXCLUDED.text, entity_keys = EXCLUDED.entity_keys,"
                " event_time = EXCLUDED.event_time, observed_at = EXCLUDED.observed_at, received_at = now()"
                " WHERE labels.observed_at <= EXCLUDED.observed_at",
                [{**row, "entity_keys": Jsonb(dict(row["entity_keys"]))} for row in latest.values()])
        return len(latest)

    async def labels_for(self, source: int, start: datetime, end: datetime) -> list[LabelRow]:
        """Flag labels of `source` with event_time in [start, end) that were known before `end`."""
        async with self.db.connection() as conn:
            rows = await (await conn.execute(
                "SELECT label_key, entity_keys, event_time, observed_at, flag FROM labels"
                " WHERE source = %s AND value_kind = 'flag' AND event_time >= %s AND event_time < %s"
                " AND observed_at < %s ORDER BY event_time, label_key", (source, start, end, end))).fetchall()
        return [LabelRow(r["label_key"], r["entity_keys"], r["event_time"], r["observed_at"], r["flag"]) for r in rows]

    async def count_labels(self, source: int, start: datetime, end: datetime) -> dict[str, int]:
        """How many labels of the window exist at all, and how many were only known after its end."""
        async with self.db.connection() as conn:
            row = await (await conn.execute(
                "SELECT count(*) AS total, count(*) FILTER (WHERE observed_at >= %s) AS late,"
                " count(*) FILTER (WHERE value_kind <> 'flag') AS not_flags FROM labels"
                " WHERE source = %s AND event_time >= %s AND event_time < %s", (end, source, start, end))).fetchone()
        assert row is not None
        return dict(row)
