"""`flywheel evaluate fraud 4 [--baseline 3]`: evaluate a version now and print its verdict,
gate checks and metrics next to the baseline's; `flywheel evaluate --list [fraud]` lists evaluations,
`flywheel evaluate --show ID` prints one (an LLM evaluation with its failing examples).
`flywheel golden push FILE | list | show APP`: LLM applications' golden sets."""

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
from flywheel.proto.evaluator.v1 import evaluator_service_pb2 as pb
from flywheel.proto.evaluator.v1 import evaluator_service_pb2_grpc as pb_grpc
from flywheel.proto.events.v1 import models_pb2

console = Console()
SHOWN = ["roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy", "ece", "brier", "log_loss", "threshold"]
LLM_SHOWN = ["answer_correctness", "token_f1", "semantic_similarity", "groundedness", "refusal_correctness",
             "refusal_recall", "over_refusal_rate", "pii_leak_rate", "toxicity", "latency_p50_s", "latency_p95_s",
             "tokens_per_answer", "tokens_per_second", "cost_per_answer"]
FAILING_SHOWN = 20


def verdict_name(verdict: int) -> str:
    return models_pb2.EvaluationVerdict.Name(verdict).removeprefix("EVALUATION_VERDICT_").lower()  # type: ignore[arg-type]


def evaluation_table(evaluation: pb.Evaluation) -> Table:
    baseline = f"baseline v{evaluation.baseline_version}" if evaluation.baseline_version else "no baseline"
    table = Table("metric", f"candidate v{evaluation.candidate_version}", baseline)
    for name in LLM_SHOWN if evaluation.golden_set else SHOWN:
        if name in evaluation.candidate_metrics or name in evaluation.baseline_metrics:
            cells = [f"{m[name]:.4f}" if name in m else "-"
                     for m in (evaluation.candidate_metrics, evaluation.baseline_metrics)]
            table.add_row(name, *cells)
    return table


def _clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def failing_table(evaluation: pb.Evaluation, limit: int = FAILING_SHOWN) -> Table | None:
    """The candidate's failing examples: question, reference, both answers and why."""
    failing = [q for q in evaluation.questions if q.failing]
    if not failing:
        return None
    table = Table("item", "question", "reference", f"candidate v{evaluation.candidate_version}",
                  f"baseline v{evaluation.baseline_version}" if evaluation.baseline_version else "baseline", "why",
                  title=f"failing examples ({len(failing)} of {len(evaluation.questions)}"
                        + (f", first {limit}" if len(failing) > limit else "") + ")")
    for q in failing[:limit]:
        table.add_row(q.item_id, _clip(q.question, 40), _clip(q.reference, 40), _clip(q.candidate_answer),
                      _clip(q.baseline_answer), q.reason)
    return table


def show(evaluation: pb.Evaluation) -> None:
    verdict = verdict_name(evaluation.verdict)
    colour = {"passed": "green", "failed": "red"}.get(verdict, "yellow")
    what = (f"{evaluation.rows} questions of golden set {evaluation.golden_set} v{evaluation.golden_set_version}"
            if evaluation.golden_set else f"{evaluation.rows} rows")
    console.print(f"evaluation {evaluation.evaluation_id}: {evaluation.model_name}:{evaluation.candidate_version} "
                  f"[{colour}]{verdict.upper()}[/] on {what}")
    if evaluation.error:
        console.print(f"[yellow]{evaluation.error}[/]")
    for check in evaluation.checks:
        console.print(f"  {'ok ' if check.passed else 'BAD'} {check.name}: {check.detail}")
    if evaluation.candidate_metrics:
        console.print(evaluation_table(evaluation))
    table = failing_table(evaluation)
    if table is not None:
        console.print(table)


async def _run(address: str, timeout: float, model: str, version: int | None, baseline: int, listing: bool,
               shown: str) -> int:
    async with rpc.channel(address, default_timeout=timeout, auth=client_auth()) as channel:
        stub = pb_grpc.EvaluatorServiceStub(channel)
        if shown:
            got = await stub.GetEvaluation(pb.GetEvaluationRequest(evaluation_id=shown))
            show(got.evaluation)
            return 0
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
@click.option("--show", "shown", default="", metavar="ID",
              help="Print evaluation ID (an LLM evaluation with its failing examples).")
@click.option("--address", envvar="FLYWHEEL_EVALUATOR_ADDR", default="127.0.0.1:50057", show_default=True,
              help="Evaluator gRPC address.")
@click.option("--timeout", default=600.0, show_default=True, help="Deadline of the call, in seconds.")
def evaluate(model: str, version: int | None, baseline: int, listing: bool, shown: str, address: str,
             timeout: float) -> None:
    """Evaluate MODEL's VERSION against the champion now (exit code 0 = passed), --list evaluations or --show one."""
    if not listing and not shown and (not model or version is None):
        raise click.UsageError("give MODEL and VERSION (or --list, or --show ID)")
    try:
        code = asyncio.run(_run(address, timeout, model, version, baseline, listing, shown))
    except grpc.aio.AioRpcError as exc:
        console.print(f"[red]evaluator: {exc.code().name}: {exc.details()}[/]")
        code = 2
    sys.exit(code)


# -- golden sets -----------------------------------------------------------------------------------


def _call(address: str, timeout: float, call: Callable[[pb_grpc.EvaluatorServiceStub], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        async with rpc.channel(address, default_timeout=timeout, auth=client_auth()) as channel:
            return await call(pb_grpc.EvaluatorServiceStub(channel))

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        console.print(f"[red]evaluator: {exc.code().name}: {exc.details()}[/]")
        sys.exit(2)


ADDRESS = click.option("--address", envvar="FLYWHEEL_EVALUATOR_ADDR", default="127.0.0.1:50057", show_default=True,
                       help="Evaluator gRPC address.")
TIMEOUT = click.option("--timeout", default=30.0, show_default=True, help="Deadline of the call, in seconds.")


def _describe(g: pb.GoldenSet) -> str:
    return (f"{g.application} v{g.version}: {g.answerable_items} answerable, {g.refusal_items} refusal items, "
            f"sha256 {g.content_sha256[:12]}, {g.created_at.ToJsonString()} by {g.created_by or '?'}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def golden() -> None:
    """Golden sets of LLM applications: the questions, reference answers and policy prompts that judge every
    candidate adapter, prompt version or distilled student (format: services/evaluator/README.md)."""


@golden.command("push")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@ADDRESS
@TIMEOUT
def golden_push(file: Path, address: str, timeout: float) -> None:
    """Store FILE (YAML) as its application's newest golden set (a new version only when its content changed)."""
    text = file.read_text()
    response = _call(address, timeout, lambda stub: stub.PutGoldenSet(pb.PutGoldenSetRequest(yaml=text)))
    console.print(("stored " if response.created else "unchanged ") + _describe(response.golden_set))


@golden.command("list")
@click.argument("application", required=False, default="")
@ADDRESS
@TIMEOUT
def golden_list(application: str, address: str, timeout: float) -> None:
    """The newest golden set of every application, or every version of APPLICATION's."""
    response = _call(address, timeout,
                     lambda stub: stub.ListGoldenSets(pb.ListGoldenSetsRequest(application=application)))
    if not response.golden_sets:
        console.print("no golden sets")
    for g in response.golden_sets:
        console.print(_describe(g))


@golden.command("show")
@click.argument("application")
@click.option("--version", default=0, show_default=True, help="Version to show; 0 = the newest.")
@ADDRESS
@TIMEOUT
def golden_show(application: str, version: int, address: str, timeout: float) -> None:
    """Print APPLICATION's golden set (the newest, or --version N) as it was pushed."""
    response = _call(address, timeout, lambda stub: stub.GetGoldenSet(
        pb.GetGoldenSetRequest(application=application, version=version)))
    console.print(f"# {_describe(response.golden_set)}", markup=False, highlight=False)
    console.print(response.golden_set.yaml, markup=False, highlight=False)
