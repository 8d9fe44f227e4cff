"""A database table used as a job queue, and the scheduler that runs its jobs.

A job table has `id` (text), `status` and `created_at` columns. `JobTable` holds the queue's SQL:
claim the oldest queued job (`FOR UPDATE SKIP LOCKED`, so several schedulers, in one process or
many, never claim the same job), find or requeue the jobs a crash left running, NOTIFY schedulers
when a job is queued, and page through the table with keyset page tokens. What a service stores
about its jobs (its columns, what claiming also sets) stays in its store.py.

`JobScheduler` runs claimed jobs: up to `max_concurrent` at once, woken by `wake()` or a NOTIFY on
the table's channel, else every `poll_interval`; it backs off on errors, and `stop` cancels the
loop and every running job, then waits for them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, LiteralString, TypeVar

from psycopg import AsyncConnection, sql

from flywheel.common.errors import InvalidArgument
from flywheel.common.tasks import cancel_and_wait, within

log = logging.getLogger(__name__)

MAX_PAGE = 500
DEFAULT_PAGE = 50
Row = dict[str, Any]
Job = TypeVar("Job")


def page_token(row: Mapping[str, Any]) -> str:
    """The token of the page after `row` (newest first: by created_at, then id)."""
    data = {"created_at": row["created_at"].isoformat(), "id": row["id"]}
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def parse_page_token(token: str, issuer: str) -> tuple[datetime, str] | None:
    """(created_at, id) of a token from `page_token`; None for ""; InvalidArgument for anything else."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return datetime.fromisoformat(data["created_at"]), str(data["id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"page_token {token!r} is not a token this {issuer} issued") from exc


@dataclass(frozen=True)
class JobTable:
    """The queue SQL of table `name`. `on_claim` is what claiming also sets, as SQL assignments written by
    the owning store (e.g. "started_at = now()"); `issuer` names the service in a bad page token's message."""

    name: LiteralString
    queued: Any
    running: Any
    on_claim: LiteralString = ""
    issuer: str = "service"

    @property
    def _table(self) -> sql.Identifier:
        return sql.Identifier(self.name)

    def channel(self, schema: str) -> str:
        """The NOTIFY channel that tells schedulers a job of this table (in `schema`) was queued."""
        channel = f"flywheel_jobs_{schema}_{self.name}"
        if len(channel) < 64:  # PostgreSQL refuses longer channel names
            return channel
        return f"flywheel_jobs_{hashlib.sha256(f'{schema}.{self.name}'.encode()).hexdigest()[:32]}"

    async def notify(self, conn: AsyncConnection, schema: str, job_id: str) -> None:
        """Wake the schedulers when `conn`'s transaction commits."""
        await conn.execute("SELECT pg_notify(%s, %s)", (self.channel(schema), job_id))

    async def claim_next(self, conn: AsyncConnection) -> Row | None:
        """Move the oldest queued job to running and return it; None when there is none to claim."""
        also = sql.SQL(", " + self.on_claim) if self.on_claim else sql.SQL("")
        query = sql.SQL(
            "UPDATE {table} SET status = %s{also} WHERE id = (SELECT id FROM {table} WHERE status = %s"
            " ORDER BY created_at, id FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING *").format(table=self._table, also=also)
        return await (await conn.execute(query, (self.running, self.queued))).fetchone()

    async def interrupted(self, conn: AsyncConnection) -> list[Row]:
        """Jobs left running (by a crash, when no scheduler runs yet), oldest first."""
        query = sql.SQL("SELECT * FROM {table} WHERE status = %s ORDER BY created_at, id").format(table=self._table)
        return await (await conn.execute(query, (self.running,))).fetchall()

    async def requeue_interrupted(self, conn: AsyncConnection) -> int:
        """Queue the jobs left running again; how many there were."""
        query = sql.SQL("UPDATE {table} SET status = %s WHERE status = %s").format(table=self._table)
        return (await conn.execute(query, (self.queued, self.running))).rowcount

    async def page(self, conn: AsyncConnection, page_size: int, token: str,
                   **equal: Any) -> tuple[list[Row], str]:
        """One page of jobs, newest first, with the columns in `equal` equal to their values (empty values
        do not filter), and the next page's token ("" after the last)."""
        if page_size < 0:
            raise InvalidArgument(f"page_size must not be negative, got {page_size}")
        size = min(page_size or DEFAULT_PAGE, MAX_PAGE)
        where: list[sql.Composable] = [sql.SQL("TRUE")]
        params: list[Any] = []
        for column, value in equal.items():
            if value:
                where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        after = parse_page_token(token, self.issuer)
        if after is not None:
            where.append(sql.SQL("(created_at, id) < (%s, %s)"))
            params += list(after)
        query = sql.SQL("SELECT * FROM {table} WHERE {where} ORDER BY created_at DESC, id DESC LIMIT %s").format(
            table=self._table, where=sql.SQL(" AND ").join(where))
        rows = await (await conn.execute(query, (*params, size + 1))).fetchall()
        return rows[:size], (page_token(rows[size - 1]) if len(rows) > size else "")


class JobScheduler(Generic[Job]):
    """Claims jobs with `claim` and runs each as a task of `execute`, named by `key`.

    With `listen_url` and `channel` it LISTENs for NOTIFYs on its own connection and wakes on each.
    `on_done(key)` is called when a job's task ends (done, failed or cancelled).
    """

    def __init__(self, name: str, *, claim: Callable[[], Awaitable[Job | None]],
                 execute: Callable[[Job], Awaitable[None]], key: Callable[[Job], str], max_concurrent: int = 1,
                 poll_interval: float = 1.0, listen_url: str = "", channel: str = "",
                 on_done: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.claim = claim
        self.execute = execute
        self.key = key
        self.max_concurrent = max(1, max_concurrent)
        self.poll_interval = poll_interval
        self.listen_url = listen_url
        self.channel = channel
        self.on_done = on_done
        self.executing: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._background: list[asyncio.Task] = []

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._background = [asyncio.create_task(self._schedule(), name=f"{self.name}-scheduler")]
        if self.listen_url and self.channel:
            self._background.append(asyncio.create_task(self._listen(), name=f"{self.name}-listener"))

    async def stop(self) -> None:
        await cancel_and_wait([*self._background, *self.executing.values()])
        self._background = []

    async def _schedule(self) -> None:
        backoff = 0.5
        while True:
            try:
                while len(self.executing) < self.max_concurrent:
                    job = await self.claim()
                    if job is None:
                        break
                    key = self.key(job)
                    task = asyncio.create_task(self.execute(job), name=f"{self.name}-{key}")
                    self.executing[key] = task
                    task.add_done_callback(lambda _, key=key: self._done(key))
                backoff = 0.5
                with contextlib.suppress(TimeoutError):
                    await within(self._wake.wait(), self.poll_interval)
                self._wake.clear()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s scheduler error; retrying", self.name)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _done(self, key: str) -> None:
        self.executing.pop(key, None)
        if self.on_done is not None:
            self.on_done(key)
        self.wake()

    async def _listen(self) -> None:
        """Wake the scheduler whenever any process queues a job (NOTIFY at commit)."""
        while True:
            try:
                conn = await AsyncConnection.connect(self.listen_url, autocommit=True)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    async for _ in conn.notifies():
                        self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s listener reconnecting", self.name, extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
