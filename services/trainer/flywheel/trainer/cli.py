"""`flywheel train --model fraud --window 2026-01-01:2026-02-01`: start a run, follow it
with a progress bar, then print its metrics and the registered version."""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import UTC, date, datetime, time

import click
import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from flywheel.common import rpc
from flywheel.common.cli import client_auth
from flywheel.proto.events.v1 import models_pb2
from flywheel.proto.trainer.v1 import trainer_service_pb2 as pb
from flywheel.proto.trainer.v1 import trainer_service_pb2_grpc as pb_grpc

console = Console()
DATES = re.compile(r"^(\d{4}-\d{2}-\d{2}):(\d{4}-\d{2}-\d{2})$")
REASONS = ["manual", "schedule", "drift", "performance"]
# Metrics shown first, in this order; the rest follow alphabetically.
SHOWN_FIRST = ["roc_auc", "pr_auc", "f1", "precision", "recall", "ece", "brier", "positive_rate", "rows"]


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_window(text: str) -> tuple[datetime, datetime]:
    """`YYYY-MM-DD:YYYY-MM-DD` (UTC midnights) or an ISO-8601 interval `START/END`; end excluded."""
    text = text.strip()
    try:
        if match := DATES.match(text):
            start, end = (datetime.combine(date.fromisoformat(d), time(), UTC) for d in match.groups())
        elif "/" in text:
            first, _, second = text.partition("/")
            start, end = _instant(first), _instant(second)
        else:
            raise ValueError("expected START:END dates or a START/END interval")
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: {exc} (e.g. 2026-01-01:2026-02-01, or "
                                 "2026-01-01T00:00Z/2026-01-15T12:00Z)", param_hint="--window") from None
    if start >= end:
        raise click.BadParameter(f"{text!r} is empty: its start is not before its end", param_hint="--window")
    return start, end


def parse_params(values: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--param")
        params[key.strip()] = text.strip()
    return params


def status_name(status: int) -> str:
    return pb.RunStatus.Name(status).removeprefix("RUN_STATUS_").lower()  # type: ignore[arg-type]


def metrics_table(run: pb.Run) -> Table:
    table = Table("metric (test slice)", "value", title=f"run {run.run_id}")
    names = [m for m in SHOWN_FIRST if m in run.metrics] + sorted(set(run.metrics) - set(SHOWN_FIRST))
    for name in names:
        value = run.metrics[name]
        table.add_row(name, f"{value:.0f}" if name == "rows" else f"{value:.4f}")
    return table


async def follow(stub: pb_grpc.TrainerServiceStub, run_id: str, wait_timeout: float) -> pb.Run:
    """Show the run's progress until it ends; returns its final state."""
    final: pb.Run | None = None
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("queued", total=1.0)
        async for update in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=wait_timeout):
            final = update.run
            progress.update(task, completed=update.progress,
                            description=f"{update.run.model_name}: {update.stage or status_name(update.run.status)}")
    assert final is not None
    return final


async def start_and_follow(address: str, timeout: float, wait_timeout: float, model: str, start: datetime,
                           end: datetime, params: dict[str, str], reason: str, detach: bool) -> int:
    request = pb.StartRunRequest(model_name=model, params=params,
                                 reason=models_pb2.RetrainReason.Value(f"RETRAIN_REASON_{reason.upper()}"))
    request.window_start.FromDatetime(start)
    request.window_end.FromDatetime(end)
    async with rpc.channel(address, default_timeout=timeout, auth=client_auth()) as channel:
        stub = pb_grpc.TrainerServiceStub(channel)
        started = await stub.StartRun(request)
        run = started.run
        if started.coalesced:
            console.print(f"a run of {model} is already {status_name(run.status)}: following run {run.run_id} "
                          f"(window {run.window_start.ToDatetime():%Y-%m-%d %H:%M}.."
                          f"{run.window_end.ToDatetime():%Y-%m-%d %H:%M})")
        else:
            console.print(f"run {run.run_id} queued: {model} on [{start.isoformat()}, {end.isoformat()})")
        if detach:
            return 0
        run = await follow(stub, run.run_id, wait_timeout)
    if run.status == pb.RUN_STATUS_FAILED:
        console.print(f"[red]run {run.run_id} failed:[/red] {run.failure_reason}")
        return 1
    console.print(metrics_table(run))
    if run.epochs:
        best = min(run.epochs, key=lambda e: e.validation_loss)
        console.print(f"epochs: {len(run.epochs)} (best {best.epoch}: validation loss {best.validation_loss:.4f}, "
                      f"validation ROC AUC {best.validation_roc_auc:.4f}); rows train/validation/test: "
                      f"{run.train_rows}/{run.validation_rows}/{run.test_rows}")
    parent = f" (parent {run.parent.version})" if run.parent.version else ""
    console.print(f"registered [bold]{run.model_name}:{run.registered_version}[/bold]{parent} "
                  f"dataset {run.dataset_snapshot_id[:12]}")
    return 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, help="Model spec to train (e.g. fraud).")
@click.option("--window", required=True, metavar="START:END",
              help="Training data by event time, end excluded: 2026-01-01:2026-02-01 (UTC dates) or an ISO "
                   "interval 2026-01-01T00:00Z/2026-01-15T12:00Z.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Override a spec parameter (epochs, seed, learning_rate, ...) or set scenario / tag.<name> "
                   "(repeatable).")
@click.option("--reason", type=click.Choice(REASONS), default="manual", show_default=True,
              help="Why this run is started (recorded with it).")
@click.option("--address", envvar="FLYWHEEL_TRAINER_ADDR", default="127.0.0.1:50053", show_default=True,
              help="Trainer gRPC address (env FLYWHEEL_TRAINER_ADDR).")
@click.option("--timeout", default=30.0, show_default=True, help="Deadline of StartRun, in seconds.")
@click.option("--wait-timeout", default=6 * 3600.0, show_default=True,
              help="How long to follow the run before giving up, in seconds.")
@click.option("--detach", is_flag=True, help="Start the run, print its id and return without waiting.")
def train(model: str, window: str, params: tuple[str, ...], reason: str, address: str, timeout: float,
          wait_timeout: float, detach: bool) -> None:
    """Train MODEL on the labelled rows of WINDOW and register the resulting version.

    Shows the run's progress, then its metrics on the held-out latest slice and the
    registered version. Exits 1 when the run fails (its reason is printed).
    """
    start, end = parse_window(window)
    try:
        code = asyncio.run(start_and_follow(address, timeout, wait_timeout, model, start, end,
                                            parse_params(params), reason, detach))
    except grpc.aio.AioRpcError as exc:
        console.print(f"[red]error[/red] {exc.code().name}: {exc.details()}")
        code = 1
    sys.exit(code)
