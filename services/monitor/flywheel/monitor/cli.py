"""`flywheel monitor status <model>` / `windows <model>` / `report <window_id> [--html out.html]` /
`llm <application>` (online scoring of an LLM application's answers)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
import grpc
from rich.console import Console
from rich.table import Table

from flywheel.common import rpc
from flywheel.common.cli import client_auth
from flywheel.proto.monitor.v1 import monitor_service_pb2 as pb
from flywheel.proto.monitor.v1 import monitor_service_pb2_grpc as pb_grpc

console = Console()


def _call(address: str, timeout: float, fn: Callable[[pb_grpc.MonitorServiceStub], Awaitable[Any]]) -> None:
    async def run() -> None:
        async with rpc.channel(address, default_timeout=timeout, auth=client_auth()) as channel:
            await fn(pb_grpc.MonitorServiceStub(channel))
    try:
        asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        console.print(f"[red]monitor: {exc.code().name}: {exc.details()}[/]")
        sys.exit(2)


def windows_table(windows: Any) -> Table:
    table = Table("window", "version", "seq", "state", "rows", "labelled", "drifted share", "drifted", "est f1", "f1")
    for w in windows:
        table.add_row(w.window_id, str(w.model.version), str(w.sequence),
                      pb.WindowState.Name(w.state).removeprefix("WINDOW_STATE_").lower(), str(w.rows),
                      str(w.labelled_rows), f"{w.drifted_share:.2f}", "yes" if w.drifted else "no",
                      f"{w.estimated_performance['f1']:.3f}" if "f1" in w.estimated_performance else "-",
                      f"{w.performance['f1']:.3f}" if "f1" in w.performance else "-")
    return table


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--address", envvar="FLYWHEEL_MONITOR_ADDR", default="127.0.0.1:50058", show_default=True,
              help="Monitor gRPC address.")
@click.option("--timeout", default=30.0, show_default=True, help="Deadline of each call, in seconds.")
@click.pass_context
def monitor(ctx: click.Context, address: str, timeout: float) -> None:
    """Drift and performance of models in production (the monitor service)."""
    ctx.obj = (address, timeout)


@monitor.command()
@click.argument("model")
@click.pass_obj
def status(obj: tuple[str, float], model: str) -> None:
    """Alert state and recent windows of every version of MODEL."""
    async def run(stub: pb_grpc.MonitorServiceStub) -> None:
        response = await stub.GetModelStatus(pb.GetModelStatusRequest(model_name=model))
        for v in response.versions:
            console.print(f"[bold]{model} v{v.model.version}[/]: {v.windows} windows, {v.open_window_rows} rows in "
                          f"the open one; {v.drifted_of_last} of the last {v.hysteresis_m} drifted "
                          f"(alert at {v.hysteresis_n})")
            if v.last_alert.drift_id:
                console.print(f"  last alert {v.last_alert.drift_id} at {v.last_alert.detected_at.ToJsonString()}, "
                              f"retrain request {v.last_retrain_request_id or 'waiting for labels'}")
            console.print(windows_table(v.recent_windows))
    _call(*obj, run)


@monitor.command()
@click.argument("model")
@click.option("--version", default=0, help="Only this version (0 = all).")
@click.option("--limit", default=50, show_default=True)
@click.pass_obj
def windows(obj: tuple[str, float], model: str, version: int, limit: int) -> None:
    """Closed windows of MODEL, newest first."""
    async def run(stub: pb_grpc.MonitorServiceStub) -> None:
        response = await stub.ListWindows(pb.ListWindowsRequest(model_name=model, version=version, page_size=limit))
        console.print(windows_table(response.windows))
    _call(*obj, run)


@monitor.command()
@click.argument("window_id")
@click.option("--html", "html", type=click.Path(dir_okay=False, path_type=Path),
              help="Write Evidently's HTML report to this file (else print the JSON).")
@click.pass_obj
def report(obj: tuple[str, float], window_id: str, html: Path | None) -> None:
    """The drift report of one window."""
    async def run(stub: pb_grpc.MonitorServiceStub) -> None:
        fmt = pb.REPORT_FORMAT_HTML if html else pb.REPORT_FORMAT_JSON
        response = await stub.GetReport(pb.GetReportRequest(window_id=window_id, format=fmt))
        if html:
            html.write_text(response.content)
            console.print(f"wrote {html} ({len(response.content)} characters)")
        else:
            click.echo(response.content)
    _call(*obj, run)


def _score(scores: Any, key: str, digits: int = 3) -> str:
    return f"{scores[key]:.{digits}f}" if key in scores else "-"


@monitor.command()
@click.argument("application")
@click.option("--limit", default=20, show_default=True, help="How many windows, newest first.")
@click.pass_obj
def llm(obj: tuple[str, float], application: str, limit: int) -> None:
    """Online scores of APPLICATION's live answers per window: groundedness, refusal, PII leak and negative
    feedback rates, the reference they are judged against, and the alerts they raised."""
    async def run(stub: pb_grpc.MonitorServiceStub) -> None:
        response = await stub.ListLlmWindows(pb.ListLlmWindowsRequest(application=application, page_size=limit))
        alert = response.last_alert_at.ToJsonString() if response.HasField("last_alert_at") else "never"
        console.print(f"[bold]{application}[/]: champion {response.champion.name} v{response.champion.version}; "
                      f"last alert {alert}")
        table = Table("window", "seq", "model", "state", "answers", "grounded", "refusals", "pii leaks",
                      "neg. feedback", "alert")
        for w in response.windows:
            state = "open" if not w.closed else "reference" if w.is_reference else \
                "degraded" if w.degraded else "ok" if w.checks else "unjudged"
            ref = w.reference

            def cell(key: str, w: Any = w, ref: Any = ref) -> str:
                return _score(w.scores, key) + (f" ({_score(ref, key)})" if key in ref else "")
            table.add_row(w.window_id[:8], str(w.sequence), f"{w.model.name} v{w.model.version}", state,
                          str(w.generations), cell("groundedness"), cell("refusal_rate"), cell("pii_leak_rate"),
                          cell("negative_feedback_rate"), w.drift_event_id[:8] or "-")
        console.print(table)
        console.print("scores of closed windows, (reference) where judged")
    _call(*obj, run)
