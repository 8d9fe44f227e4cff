"""What every benchmark shares: the broker + database, progress output, statistics and result files.

One `Infrastructure` serves the whole run: the embedded stack (Tansu + PostgreSQL, fsync off)
in a temporary directory, or the Kafka and PostgreSQL named by FLYWHEEL_KAFKA_BOOTSTRAP and
FLYWHEEL_DATABASE_URL when both are set. A benchmark returns a `BenchResult`; `write_result`
turns it into `<out>/<name>.json` and `<out>/<name>.md`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from psycopg import AsyncConnection, sql
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from flywheel.common.auth import Role, TokenStore
from flywheel.common.db import Database
from flywheel.common.embedded import EmbeddedStack
from flywheel.common.rpc import ClientAuth

MiB = 1 << 20
REPEATS = 3


@dataclass
class Infrastructure:
    """The broker and database every benchmark of a run uses, plus a scratch directory on local disk and an
    admin token for the benchmarks' own calls (every door takes one)."""

    kafka_bootstrap: str
    database_url: str
    home: Path
    description: str
    admin_token: str = ""

    def auth(self) -> ClientAuth:
        return ClientAuth(token=self.admin_token)


def admin_token(database_url: str) -> str:
    """A fresh admin token in the database's token store (the benchmarks play an operator)."""
    async def create() -> str:
        store = TokenStore(Database(database_url, "auth", min_size=1, max_size=1))
        await store.db.pool.open(wait=True, timeout=30)
        try:
            await store.migrate()
            token, _ = await store.create("bench", [Role.ADMIN], created_by="make bench")
            return token
        finally:
            await store.db.close()
    return asyncio.run(create())


@contextlib.contextmanager
def infrastructure() -> Iterator[Infrastructure]:
    """The configured Kafka + PostgreSQL, or an embedded stack started for this run and stopped after it."""
    kafka, database = os.environ.get("FLYWHEEL_KAFKA_BOOTSTRAP"), os.environ.get("FLYWHEEL_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp:
        home = Path(tmp)
        if kafka and database:
            yield Infrastructure(kafka, database, home, "external Kafka + PostgreSQL (FLYWHEEL_* settings)",
                                 admin_token(database))
            return
        stack = EmbeddedStack(home, durable=False).start()
        try:
            yield Infrastructure(stack.kafka.bootstrap, stack.postgres.url, home,
                                 "embedded Tansu broker (memory) + PostgreSQL 18 (fsync off), loopback",
                                 admin_token(stack.postgres.url))
        finally:
            stack.stop()


class Steps:
    """Progress of a run: a bar per benchmark and one log line per finished step (also without a TTY)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=True,
        )
        self._task: Any = None
        self._name = ""

    def __enter__(self) -> Steps:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def begin(self, name: str, total: int) -> None:
        """Start the bar of benchmark `name`, which will run `total` steps."""
        if self._task is not None:
            self.progress.remove_task(self._task)
        self._name = name
        self._task = self.progress.add_task(name, total=total)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """One step of the current benchmark; logs its duration when it ends."""
        self.progress.update(self._task, description=f"{self._name}: {what}")
        start = time.perf_counter()
        yield
        self.progress.advance(self._task)
        self.console.log(f"{self._name}: {what} [dim]({time.perf_counter() - start:.1f}s)[/dim]")

    def log(self, message: str) -> None:
        self.console.log(f"{self._name}:   {message}")


@dataclass
class Context:
    """What a benchmark gets: where to run, how big, and where to report progress."""

    infra: Infrastructure
    quick: bool
    run_id: str
    steps: Steps


@dataclass
class BenchResult:
    """The outcome of one benchmark, written as JSON (all numbers) and markdown (the tables)."""

    name: str
    title: str
    results: list[dict[str, Any]]
    ratios: dict[str, float]
    notes: str
    tables: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def document(self, machine: dict[str, Any], date: str, stack: str, quick: bool) -> dict[str, Any]:
        return {"name": self.name, "machine": machine, "date": date, "stack": stack, "quick": quick,
                "results": self.results, "ratios": self.ratios, **self.extra, "notes": self.notes}

    def markdown(self, machine: dict[str, Any], date: str, stack: str, quick: bool) -> str:
        load = self.extra.get("load_average_1m")
        busy = f" · load average {load['start']} -> {load['end']}" if load else ""
        header = (f"# {self.title}\n\n{date} · {machine['cpu_count']} CPUs · Python {machine['python']} · "
                  f"{stack}{busy}{' · --quick' if quick else ''}\n")
        return "\n".join([header, *(t.rstrip() + "\n" for t in self.tables)])


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    return info


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_result(result: BenchResult, out_dir: Path, *, machine: dict[str, Any], date: str, stack: str,
                 quick: bool) -> str:
    """Write `<out_dir>/<name>.json` and `<out_dir>/<name>.md`; returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = result.document(machine, date, stack, quick)
    (out_dir / f"{result.name}.json").write_text(json.dumps(document, indent=2) + "\n")
    markdown = result.markdown(machine, date, stack, quick)
    (out_dir / f"{result.name}.md").write_text(markdown)
    return markdown


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Sequence[int] = ()) -> str:
    """A GitHub markdown table; columns whose index is in `right` are right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    align = ["---:" if i in right else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating linearly between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 4) if denominator else math.nan


def rounded(value: float, digits: int = 3) -> float:
    """A measurement rounded to `digits` significant digits (more would be noise)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


def thousands(value: float) -> str:
    return f"{value:,.0f}"


def significant(value: float, digits: int = 3) -> str:
    """`value` with `digits` significant digits, thousands separated: 1,055 / 116 / 12.5 / 0.418."""
    value = rounded(value, digits)
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value)))) if value else 0
    return f"{value:,.{decimals}f}"


async def drop_schemas(database_url: str, schemas: Sequence[str]) -> None:
    """Best effort: a benchmark's schemas should not linger in a shared database."""
    with contextlib.suppress(Exception):
        async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
            for schema in schemas:
                await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Best effort: on a real cluster the bench topics should not linger."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    with contextlib.suppress(Exception):
        await admin.start()
        try:
            await admin.delete_topics(topics)
        finally:
            await admin.close()
