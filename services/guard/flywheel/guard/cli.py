"""`flywheel guard ...`: train and register the detectors, measure them, check texts, manage policies.

    flywheel guard train [--data DIR] [--out DIR] [--no-register]   train on the shipped data, print the
                                                                      held-out table, register a version
    flywheel guard eval                                              the held-out table of the served version
    flywheel guard check APP TEXT [--output --context TEXT ...]      one check, its verdict
    flywheel guard policy put APP FILE | get APP [--version N] | list
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
import grpc
from rich.console import Console
from rich.table import Table

from flywheel.common import rpc
from flywheel.common.cli import client_auth

console = Console()


def metrics_table(held_out: dict[str, Any], pii_metrics: dict[str, Any] | None = None) -> Table:
    table = Table("rail", "precision", "recall", "F1", "positives / negatives", "benign FPR")
    for head, m in held_out["heads"].items():
        table.add_row(head, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
                      f"{m['positives']} / {m['negatives']}", f"{held_out['benign_false_positive_rate'][head]:.3f}")
    g = held_out["groundedness"]
    table.add_row("groundedness (output)", f"{g['precision']:.3f}", f"{g['recall']:.3f}", f"{g['f1']:.3f}",
                  f"{g['positives']} / {g['negatives']}", "")
    if pii_metrics:
        for kind, m in pii_metrics.items():
            if isinstance(m, dict):
                table.add_row(f"pii.{kind}", f"{m['precision']:.3f}", f"{m['recall']:.3f}", "",
                              f"{m['tp'] + m['fn']} spans", "")
    table.caption = (f"benign messages: {held_out['benign_messages']}, flagged by any classifier rail: "
                     f"{held_out['benign_false_positive_rate']['any']:.3f}")
    return table


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def guard() -> None:
    """The guard: detectors, checks and policies."""


@guard.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Directory with classify.jsonl and grounding.jsonl (default: the data the guard ships).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Also write the detectors directory here (e.g. for FLYWHEEL_GUARD_BOOTSTRAP_DIR).")
@click.option("--register/--no-register", default=True, show_default=True,
              help="Register the trained detectors as a new version in the registry.")
@click.option("--model", default="guard-detectors", show_default=True, help="Registry model name.")
@click.option("--registry", "registry_addr", envvar="FLYWHEEL_REGISTRY_ADDR", default="127.0.0.1:50051",
              show_default=True, help="Registry gRPC address.")
def train(data_dir: Path | None, out: Path | None, register: bool, model: str, registry_addr: str) -> None:
    """Train the detectors, print their held-out precision / recall, and register them.

    A registered version is not served until it is promoted: `flywheel registry promote MODEL N`."""
    from flywheel.guard import evaluation, training

    data = data_dir or training.DATA_DIR
    with console.status("training the guard detectors"):
        detectors = training.train(data)
    console.print(metrics_table(detectors.metrics["held_out"], evaluation.pii_metrics(data_dir=data)
                                if (data / "pii.jsonl").is_file() else None))
    if out is not None:
        detectors.save(out)
        console.print(f"written to {out}")
    if register:
        version = asyncio.run(_register(registry_addr, model, detectors, data))
        console.print(f"registered {model}:{version} (promote it to serve it: flywheel registry promote {model} "
                      f"{version})")


async def _register(address: str, model: str, detectors: Any, data: Path) -> int:
    from flywheel.common.clients.registry import RegistryClient
    from flywheel.guard.catalog import register

    async with RegistryClient(address, auth=client_auth(), timeout=30.0, transfer_timeout=120.0) as registry:
        found = await register(registry, model, detectors, tags={"trained_by": "flywheel guard train",
                                                                 "data": str(data)},
                               description=f"guard detectors trained by `flywheel guard train` on {data}")
    return int(found.version)


@guard.command(name="eval")
@click.option("--artifact", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="A detectors directory (default: train on the shipped data now).")
def evaluate(artifact: Path | None) -> None:
    """The held-out table of a detectors directory (or freshly trained ones) and of the PII rules."""
    from flywheel.guard import detectors as det
    from flywheel.guard import evaluation, training

    detectors = det.load(artifact) if artifact else training.train()
    console.print(metrics_table(training.evaluate(detectors), evaluation.pii_metrics()))


@guard.command()
@click.argument("application")
@click.argument("text")
@click.option("--output", is_flag=True, help="Check TEXT as a model's answer (CheckOutput) instead of an input.")
@click.option("--user-input", default="", help="With --output: what the user asked.")
@click.option("--context", multiple=True, help="With --output: a retrieved chunk's text (repeat for several).")
@click.option("--address", envvar="FLYWHEEL_GUARD_ADDR", default="127.0.0.1:50059", show_default=True,
              help="Guard gRPC address.")
def check(application: str, text: str, output: bool, user_input: str, context: tuple[str, ...], address: str) -> None:
    """Check TEXT against APPLICATION's policy and print the verdict (exit code 1 when blocked)."""
    from flywheel.common.clients.guard import GuardClient
    from flywheel.common.clients.ports import GuardChunk

    async def run() -> Any:
        async with GuardClient(address, auth=client_auth(), timeout=10.0) as client:
            if output:
                return await client.check_output(application, text, user_input=user_input,
                                                 context=[GuardChunk(text=c) for c in context])
            return await client.check_input(application, text)

    verdict = _call(run)
    colour = {"allow": "green", "redact": "yellow", "block": "red", "escalate": "magenta"}[verdict.action]
    console.print(f"[{colour}]{verdict.action.upper()}[/] {verdict.rule} {verdict.category} "
                  f"(policy v{verdict.policy_version}, {verdict.detectors}, {verdict.latency_ms:.2f} ms)")
    if verdict.blocked:
        console.print(f"message: {verdict.message}")
    else:
        console.print(f"text: {verdict.text}")
    for rail, score in (verdict.scores or {}).items():
        console.print(f"  {'*' if rail in verdict.rails_fired else ' '} {rail:<22} {score:.3f}")
    sys.exit(1 if verdict.blocked else 0)


@guard.group()
def policy() -> None:
    """Versioned per-application policies."""


def _call(make: Any) -> Any:
    try:
        return asyncio.run(make())
    except grpc.aio.AioRpcError as exc:  # pragma: no cover - clients raise domain errors
        console.print(f"[red]guard: {exc.code().name}: {exc.details()}[/]")
        sys.exit(2)
    except Exception as exc:
        from flywheel.common.errors import FlywheelError
        if isinstance(exc, FlywheelError):
            console.print(f"[red]{exc}[/]")
            sys.exit(2)
        raise


ADDRESS = click.option("--address", envvar="FLYWHEEL_GUARD_ADDR", default="127.0.0.1:50059", show_default=True,
                       help="Guard gRPC address.")


@policy.command(name="put")
@click.argument("application")
@click.argument("file", type=click.File("r"))
@ADDRESS
def put_policy(application: str, file: Any, address: str) -> None:
    """Store FILE (YAML) as the next version of APPLICATION's policy; the next check uses it."""
    from flywheel.common.clients.guard import GuardClient
    text = file.read()

    async def run() -> Any:
        async with GuardClient(address, auth=client_auth(), timeout=10.0) as client:
            return await client.put_policy(application, text)

    stored = _call(run)
    console.print(f"stored {stored.application} policy v{stored.version}")


@policy.command(name="get")
@click.argument("application")
@click.option("--version", default=0, show_default=True, help="0 = the newest.")
@ADDRESS
def get_policy(application: str, version: int, address: str) -> None:
    """Print a version of APPLICATION's policy."""
    from flywheel.proto.guard.v1 import guard_service_pb2 as pb
    from flywheel.proto.guard.v1 import guard_service_pb2_grpc as pb_grpc

    async def run() -> Any:
        async with rpc.channel(address, default_timeout=10.0, auth=client_auth()) as channel:
            return await pb_grpc.GuardServiceStub(channel).GetPolicy(
                pb.GetPolicyRequest(application=application, version=version))

    response = _call(run)
    p = response.policy
    console.print(f"# {p.application} v{p.version}, by {p.created_by} at {p.created_at.ToJsonString()}")
    click.echo(p.yaml)


@policy.command(name="list")
@ADDRESS
def list_policies(address: str) -> None:
    """The newest policy version of every application."""
    from flywheel.proto.guard.v1 import guard_service_pb2 as pb
    from flywheel.proto.guard.v1 import guard_service_pb2_grpc as pb_grpc

    async def run() -> Any:
        async with rpc.channel(address, default_timeout=10.0, auth=client_auth()) as channel:
            return await pb_grpc.GuardServiceStub(channel).ListPolicies(pb.ListPoliciesRequest())

    response = _call(run)
    table = Table("application", "version", "fail closed", "window", "by", "at")
    for p in response.policies:
        table.add_row(p.application, str(p.version), "yes" if p.fail_closed else "no", str(p.stream_window_chars),
                      p.created_by, p.created_at.ToJsonString())
    console.print(table)
