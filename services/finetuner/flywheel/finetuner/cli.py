"""`flywheel finetune APP [--wait]`: start a LoRA run of an application (or join the one under way), and
with --wait follow it with a progress bar and print its losses and the adapter version;
`flywheel finetune APP --distill [--student-layers N]` distills a smaller student from the champion's answers;
`flywheel finetune APP --dataset` describes its dataset, `flywheel finetune --list [APP]` lists runs,
`flywheel finetune --run ID [--wait]` shows (or follows) one run."""

from __future__ import annotations

import asyncio
import sys

import click
import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from flywheel.common import rpc
from flywheel.common.cli import client_auth
from flywheel.proto.events.v1 import models_pb2
from flywheel.proto.finetuner.v1 import finetuner_service_pb2 as pb
from flywheel.proto.finetuner.v1 import finetuner_service_pb2_grpc as pb_grpc

console = Console()
REASONS = ["manual", "schedule", "drift", "performance", "reviews"]
SHOWN_FIRST = ["train_loss", "eval_loss_base", "eval_loss", "perplexity_before", "perplexity_after", "train_examples",
               "eval_examples", "reviews", "corrections", "approvals", "steps", "train_seconds"]


def status_name(status: int) -> str:
    return pb.RunStatus.Name(status).removeprefix("RUN_STATUS_").lower()  # type: ignore[arg-type]


def parse_settings(values: tuple[str, ...]) -> dict[str, str]:
    settings = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--set")
        settings[key.strip()] = text.strip()
    return settings


def metrics_table(run: pb.Run) -> Table:
    table = Table("metric", "value", title=f"run {run.run_id}")
    names = [m for m in SHOWN_FIRST if m in run.metrics] + sorted(set(run.metrics) - set(SHOWN_FIRST))
    for name in names:
        value = run.metrics[name]
        table.add_row(name, f"{value:.0f}" if value.is_integer() and "loss" not in name else f"{value:.4f}")
    return table


def show_run(run: pb.Run) -> None:
    console.print(f"run {run.run_id}: {run.application} [bold]{status_name(run.status)}[/bold] "
                  f"({run.stage or '-'}), step {run.step}/{run.total_steps}, attempts {run.attempts}"
                  + (f", resumed from step {run.resumed_from_step}" if run.resumed_from_step else ""))
    if run.failure_reason:
        console.print(f"[red]failed[/red]: {run.failure_reason}")
    if run.metrics:
        console.print(metrics_table(run))
    if run.registered_version and run.settings.get("mode") == "distill":
        layers = int(run.metrics.get("student_layers", 0))
        console.print(f"registered [bold]{run.model_name}:{run.registered_version}[/bold] (student of "
                      f"{run.model_name} v{run.parent.version}: {layers} of "
                      f"{int(run.metrics.get('teacher_layers', 0))} layers, {run.metrics.get('parameters', 0):,.0f} "
                      f"parameters), dataset snapshot {run.dataset_snapshot_id[:12]}, "
                      f"{run.metrics.get('teacher_answers', 0):.0f} teacher answers, {run.reviews} reviews")
    elif run.registered_version:
        console.print(f"registered [bold]{run.model_name}:{run.registered_version}[/bold] (LoRA adapter of "
                      f"{run.base.name} v{run.base.version}), dataset snapshot {run.dataset_snapshot_id[:12]}, "
                      f"{run.reviews} reviews")


def show_dataset(dataset: pb.Dataset) -> None:
    table = Table("dataset", dataset.application or "-")
    rows = [("examples", dataset.examples), ("corrections", dataset.corrections), ("approvals", dataset.approvals),
            ("train / eval", f"{dataset.train_examples} / {dataset.eval_examples}"),
            ("duplicates dropped", dataset.duplicates), ("reviews", dataset.reviews),
            ("rejected (nothing to learn)", dataset.rejected),
            ("PII redacted", ", ".join(f"{k} {v}" for k, v in sorted(dataset.redactions.items())) or "none"),
            ("decisions waiting for their answer", dataset.pending_decisions),
            ("new corrections / threshold", f"{dataset.new_corrections} / {dataset.correction_threshold or 'off'}"),
            ("snapshot", dataset.snapshot_id), ("last run", dataset.last_run_id or "-"),
            ("last run's snapshot", dataset.last_snapshot_id or "-")]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)


async def follow(stub: pb_grpc.FinetunerServiceStub, run_id: str, wait_timeout: float) -> pb.Run:
    """Show the run's progress until it ends; returns its final state."""
    final: pb.Run | None = None
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("queued", total=1.0)
        async for update in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=wait_timeout):
            final = update.run
            progress.update(task, completed=update.progress,
                            description=f"{update.run.application}: {update.stage or status_name(update.run.status)}")
    assert final is not None
    return final


async def _run(address: str, timeout: float, wait_timeout: float, application: str, settings: dict[str, str],
               reason: str, wait: bool, dataset: bool, listing: bool, run_id: str) -> int:
    async with rpc.channel(address, default_timeout=timeout, auth=client_auth()) as channel:
        stub = pb_grpc.FinetunerServiceStub(channel)
        if listing:
            response = await stub.ListRuns(pb.ListRunsRequest(application=application, page_size=50))
            for r in response.runs:
                console.print(f"{r.created_at.ToJsonString():<28} {r.application:<24} {status_name(r.status):<10} "
                              f"{r.model_name}:{r.registered_version or '-'} {r.run_id}")
            return 0
        if dataset:
            show_dataset((await stub.GetDataset(pb.GetDatasetRequest(application=application))).dataset)
            return 0
        if run_id:
            run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
        else:
            started = await stub.StartRun(pb.StartRunRequest(
                application=application, settings=settings,
                reason=models_pb2.RetrainReason.Value(f"RETRAIN_REASON_{reason.upper()}")))
            run = started.run
            mode = run.settings.get("mode", "lora")
            if started.coalesced:
                console.print(f"a run of {application} is already {status_name(run.status)}: joined run {run.run_id} "
                              f"({mode})")
            else:
                console.print(f"run {run.run_id} queued: "
                              f"{'distilling a student of' if mode == 'distill' else 'fine-tuning'} {application}")
        if wait and run.status not in (pb.RUN_STATUS_SUCCEEDED, pb.RUN_STATUS_FAILED):
            run = await follow(stub, run.run_id, wait_timeout)
        if wait or run_id:
            show_run(run)
        return 1 if run.status == pb.RUN_STATUS_FAILED else 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("application", required=False, default="")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a setting for this run: rank, alpha, dropout, target_modules (comma list), epochs, "
                   "learning_rate, max_length, batch_size, seed, checkpoint_every, eval_fraction, mode (lora or "
                   "distill), student_layers, student_keep (ends or first) (repeatable).")
@click.option("--distill", is_flag=True,
              help="Distill instead of LoRA: train a smaller student (N of the champion's decoder layers) on the "
                   "champion's logged answers for APPLICATION (reviewed corrections override them), registered as a "
                   "new LLM version of its model with tag distilled_from. Same as --set mode=distill.")
@click.option("--student-layers", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --distill: decoder layers the student keeps (default: the service's setting, 0 = half of "
                   "the teacher's).")
@click.option("--reason", type=click.Choice(REASONS), default="manual", show_default=True,
              help="Why this run is started (recorded with it).")
@click.option("--wait", is_flag=True, help="Follow the run with a progress bar until it ends, then print its metrics.")
@click.option("--dataset", is_flag=True, help="Describe APPLICATION's dataset instead of starting a run.")
@click.option("--list", "listing", is_flag=True, help="List the newest runs (of APPLICATION, if given).")
@click.option("--run", "run_id", default="", help="Show this run (with --wait: follow it).")
@click.option("--address", envvar="FLYWHEEL_FINETUNER_ADDR", default="127.0.0.1:50054", show_default=True,
              help="Fine-tuner gRPC address (env FLYWHEEL_FINETUNER_ADDR).")
@click.option("--timeout", default=30.0, show_default=True, help="Deadline of each call, in seconds.")
@click.option("--wait-timeout", default=24 * 3600.0, show_default=True,
              help="How long --wait follows the run before giving up, in seconds.")
def finetune(application: str, settings: tuple[str, ...], distill: bool, student_layers: int | None, reason: str,
             wait: bool, dataset: bool, listing: bool, run_id: str, address: str, timeout: float,
             wait_timeout: float) -> None:
    """Fine-tune APPLICATION (an LLM application or a base model name) on its reviewed answers: a LoRA adapter
    registered as a version of its base model; with --distill, a smaller student LLM trained on the champion's
    answers. Exits 1 when the run fails (with --wait)."""
    if not (application or listing or run_id):
        raise click.UsageError("give APPLICATION (or --list, or --run ID)")
    if student_layers is not None and not distill:
        raise click.UsageError("--student-layers goes with --distill")
    overrides = parse_settings(settings)
    if distill:
        overrides["mode"] = "distill"
        if student_layers is not None:
            overrides["student_layers"] = str(student_layers)
    try:
        code = asyncio.run(_run(address, timeout, wait_timeout, application, overrides, reason, wait,
                                dataset, listing, run_id))
    except grpc.aio.AioRpcError as exc:
        console.print(f"[red]fine-tuner: {exc.code().name}: {exc.details()}[/]")
        code = 2
    sys.exit(code)
