"""`flywheel evaluate fraud 4 [--baseline 3]`: evaluate a version now and print its verdict,
gate checks and metrics next to the baseline's; `flywheel evaluate --list [fraud]` lists evaluations."""

from __future__ import annotations

import asyncio
import sys

import click
import grpc
from rich.console import Console
from rich.table import Table

from flywheel.common import rpc
from flywheel.common.cli import client_auth
from flywheel.proto.evaluator.v1 import evaluator_service_pb2 as pb
from flywheel.proto.evaluator.v1 import evaluator_service_pb2_grpc as pb_grpc
from flywheel.proto.events.v1 import models_pb2

console = Console()
SHOWN = ["roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy", "ece", "brier", "log_loss", "threshold"]


def verdict_name(verdict: int) -> str:
    return models_pb2.EvaluationVerdict.Name(verdict).removeprefix("EVALUATION_VERDICT_").lower()  # type: ignore[arg-type]


def evaluation_table(evaluation: pb.Evaluation) -> Table:
    baseline = f"baseline v{evaluation.baseline_version}" if evaluation.baseline_version else "no baseline"
    table = Table("metric", f"candidate v{evaluation.candidate_version}", baseline)
    for name in SHOWN:
        if name in evaluation.candidate_metrics or name in evaluation.baseline_metrics:
            cells = [f"{m[name]:.4f}" if name in m else "-"
                     for m in (evaluation.candidate_metrics, evaluation.baseline_metrics)]
            table.add_row(name, *cells)
    return table


def show(evaluation: pb.Evaluation) -> None:
    verdict = verdict_name(evaluation.verdict)
    colour = {"passed": "green", "failed": "red"}.get(verdict, "yellow")
    console.print(f"evaluation {evaluation.evaluation_id}: {evaluation.model_name}:{evaluation.candidate_version} "
                  f"[{colour}]{verdict.upper()}[/] on {evaluation.rows} rows")
    if evaluation.error:
        console.print(f"[yellow]{evaluation.error}[/]")
    for check in evaluation.checks:
        console.print(f"  {'ok ' if check.passed else 'BAD'} {check.name}: {check.detail}")
    if evaluation.candidate_metrics:
        console.print(evaluation_table(evaluation))


async def _run(address: str, timeout: float, model: str, version: int | None, baseline: int, listing: bool) -> int:
    async with rpc.channel(address, default_timeout=timeout, auth=client_auth()) as channel:
        stub = pb_grpc.EvaluatorServiceStub(channel)
        if listing:
            response = await stub.ListEvaluations(pb.ListEvaluationsRequest(model_name=model, page_size=50))
            for e in response.evaluations:
                console.print(f"{e.completed_at.ToJsonString() if e.HasField('completed_at') else 'pending':<28} "
                              f"{e.model_name}:{e.candidate_version} vs v{e.baseline_version} "
                              f"{verdict_name(e.verdict):<11} {e.evaluation_id}")
            return 0
        response = await stub.Evaluate(pb.EvaluateRequest(model_name=model, candidate_version=version or 0,
                                                          baseline_version=baseline), timeout=timeout)
        show(response.evaluation)
        return 0 if response.evaluation.verdict == models_pb2.EVALUATION_VERDICT_PASSED else 1


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", required=False, default="")
@click.argument("version", required=False, type=int)
@click.option("--baseline", default=0, show_default=True, help="Version to compare against; 0 = the champion.")
@click.option("--list", "listing", is_flag=True, help="List the newest evaluations (of MODEL, if given).")
@click.option("--address", envvar="FLYWHEEL_EVALUATOR_ADDR", default="127.0.0.1:50057", show_default=True,
              help="Evaluator gRPC address.")
@click.option("--timeout", default=600.0, show_default=True, help="Deadline of the call, in seconds.")
def evaluate(model: str, version: int | None, baseline: int, listing: bool, address: str, timeout: float) -> None:
    """Evaluate MODEL's VERSION against the champion now (exit code 0 = passed), or --list evaluations."""
    if not listing and (not model or version is None):
        raise click.UsageError("give MODEL and VERSION (or --list)")
    try:
        code = asyncio.run(_run(address, timeout, model, version, baseline, listing))
    except grpc.aio.AioRpcError as exc:
        console.print(f"[red]evaluator: {exc.code().name}: {exc.details()}[/]")
        code = 2
    sys.exit(code)
