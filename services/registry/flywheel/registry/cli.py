"""`flywheel registry ...`: list, show, register, promote, rollback, download, policy."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click
import grpc
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from flywheel.common import rpc
from flywheel.common.cli import client_auth
from flywheel.common.clients.registry import RegistryClient, version_ref
from flywheel.common.errors import FlywheelError, InvalidArgument
from flywheel.proto.events.v1 import common_pb2
from flywheel.proto.registry.v1 import registry_service_pb2 as pb
from flywheel.proto.registry.v1 import registry_service_pb2_grpc as pb_grpc
from flywheel.registry import domain

console = Console()


def run(func: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async command; show gRPC and input errors as one red line and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            asyncio.run(func(*args, **kwargs))
        except grpc.aio.AioRpcError as exc:
            console.print(f"[red]error[/red] {exc.code().name}: {exc.details()}")
            sys.exit(1)
        except InvalidArgument as exc:
            console.print(f"[red]error[/red] {exc}")
            sys.exit(2)
        except FlywheelError as exc:  # from the registry client: the message names the failure
            console.print(f"[red]error[/red] {exc}")
            sys.exit(1)
    return wrapper


def stub(ctx: click.Context) -> tuple[grpc.aio.Channel, pb_grpc.RegistryServiceStub]:
    channel = rpc.channel(ctx.obj["address"], default_timeout=ctx.obj["timeout"], auth=client_auth())
    return channel, pb_grpc.RegistryServiceStub(channel)


def client(ctx: click.Context) -> RegistryClient:
    """For transfers: chunked, sha256-checked, each bounded by --timeout."""
    return RegistryClient(ctx.obj["address"], timeout=ctx.obj["timeout"], transfer_timeout=ctx.obj["timeout"],
                          auth=client_auth())


def parts(ref: str) -> tuple[str, int, str]:
    """(model, version, alias) of the CLI's REF, checked: MODEL:VERSION, MODEL@ALIAS or MODEL (= MODEL@champion)."""
    parsed = domain.parse_ref(ref)
    return parsed.model_name, parsed.version or 0, parsed.alias or ""


def version_line(mv: pb.ModelVersion) -> str:
    return f"{mv.model_name}:{mv.version}" + (f" ({', '.join(mv.aliases)})" if mv.aliases else "")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--address", envvar="FLYWHEEL_REGISTRY_ADDR", default="127.0.0.1:50051", show_default=True,
              help="Registry gRPC address (env FLYWHEEL_REGISTRY_ADDR).")
@click.option("--timeout", default=30.0, show_default=True, help="Deadline of each call, in seconds.")
@click.pass_context
def registry(ctx: click.Context, address: str, timeout: float) -> None:
    """Model registry: versions, aliases (champion, challenger, ...), artifacts."""
    ctx.obj = {"address": address, "timeout": timeout}


@registry.command("list")
@click.argument("model", required=False)
@click.option("--limit", default=50, show_default=True, help="Versions per page.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Only versions with this tag (repeatable).")
@click.pass_context
@run
async def list_(ctx: click.Context, model: str | None, limit: int, tags: tuple[str, ...]) -> None:
    """List models, or the versions of MODEL (newest first)."""
    channel, s = stub(ctx)
    async with channel:
        if model is None:
            response = await s.ListModels(pb.ListModelsRequest(page_size=1000))
            table = Table("model", "latest", "aliases", "promotion")
            for m in response.models:
                aliases = ", ".join(f"{a}={v}" for a, v in sorted(m.aliases.items()))
                table.add_row(m.name, str(m.latest_version), aliases,
                              pb.PromotionMode.Name(m.promotion_mode).removeprefix("PROMOTION_MODE_").lower())
            console.print(table if response.models else "no models registered yet")
            return
        tag_filter = dict(t.split("=", 1) for t in tags if "=" in t)
        versions = await s.ListModelVersions(pb.ListModelVersionsRequest(model_name=model, page_size=limit,
                                                                          tags=tag_filter))
        table = Table("version", "semver", "kind", "aliases", "metrics", "sha256", "created")
        for mv in versions.model_versions:
            metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(mv.metrics.items()))
            table.add_row(str(mv.version), mv.semver, common_pb2.ModelKind.Name(mv.kind).removeprefix("MODEL_KIND_")
                          .lower(), ", ".join(mv.aliases), metrics, mv.artifact.sha256[:12],
                          mv.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))
        console.print(table)
        if versions.next_page_token:
            console.print(f"[dim]more versions exist; raise --limit (now {limit})[/dim]")


@registry.command()
@click.argument("ref")
@click.pass_context
@run
async def show(ctx: click.Context, ref: str) -> None:
    """Show one version: REF is MODEL:VERSION, MODEL@ALIAS or MODEL (= MODEL@champion)."""
    channel, s = stub(ctx)
    async with channel:
        mv = (await s.GetModelVersion(pb.GetModelVersionRequest(ref=version_ref(*parts(ref))))).model_version
    console.print(f"[bold]{version_line(mv)}[/bold]")
    rows = [("kind", common_pb2.ModelKind.Name(mv.kind)), ("semver", mv.semver), ("framework", mv.framework),
            ("description", mv.description), ("artifact", mv.artifact.uri), ("sha256", mv.artifact.sha256),
            ("size", f"{mv.artifact.size_bytes} bytes"), ("created", mv.created_at.ToDatetime().isoformat())]
    rows += [(f"metric {k}", f"{v:.6g}") for k, v in sorted(mv.metrics.items())]
    rows += [(f"tag {k}", v) for k, v in sorted(mv.tags.items())]
    rows += [(f"lineage {field.name}", str(value)) for field, value in mv.lineage.ListFields()]
    for key, value in rows:
        if value:
            console.print(f"  {key:<28} {value}")


@registry.command()
@click.argument("model")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["predictive", "llm", "lora_adapter", "embedding"]), default="predictive",
              show_default=True)
@click.option("--framework", default="", help="e.g. pytorch, transformers, peft.")
@click.option("--semver", default="", help="Optional semantic version label, e.g. 1.2.0.")
@click.option("--description", default="")
@click.option("--metric", "metrics", multiple=True, metavar="NAME=VALUE", help="A metric (repeatable).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag (repeatable).")
@click.option("--parent", type=int, default=0, help="Parent version (lineage).")
@click.pass_context
@run
async def register(ctx: click.Context, model: str, path: Path, kind: str, framework: str, semver: str,
                   description: str, metrics: tuple[str, ...], tags: tuple[str, ...], parent: int) -> None:
    """Register the file PATH as a new version of MODEL (streamed, with a progress bar)."""
    try:
        metric_values = {k: float(v) for k, v in (m.split("=", 1) for m in metrics)}
    except ValueError as exc:
        raise InvalidArgument(f"--metric takes NAME=NUMBER: {exc}") from exc
    spec = pb.ModelVersionSpec(
        model_name=model, kind=common_pb2.ModelKind.Value(f"MODEL_KIND_{kind.upper()}"), framework=framework,
        semver=semver, description=description, filename=path.name, metrics=metric_values,
        tags=dict(t.split("=", 1) for t in tags if "=" in t), lineage=common_pb2.Lineage(parent_version=parent))
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(f"uploading {path.name}", total=path.stat().st_size)
        mv = await client(ctx).register(spec, path, on_progress=lambda sent: progress.advance(task, sent))
    console.print(f"registered [bold]{mv.model_name}:{mv.version}[/bold] sha256={mv.artifact.sha256}")


@registry.command()
@click.argument("model")
@click.argument("version", type=int)
@click.option("--alias", default=domain.CHAMPION, show_default=True, help="Alias to point at VERSION.")
@click.pass_context
@run
async def promote(ctx: click.Context, model: str, version: int, alias: str) -> None:
    """Point ALIAS (default champion) of MODEL at VERSION; the old champion becomes `previous`."""
    channel, s = stub(ctx)
    async with channel:
        moved = await s.SetAlias(pb.SetAliasRequest(model_name=model, alias=alias, version=version))
    was = f" (was {moved.previous_version})" if moved.previous_version else ""
    console.print(f"{model}@{alias} -> {version}{was}")


@registry.command()
@click.argument("model")
@click.pass_context
@run
async def rollback(ctx: click.Context, model: str) -> None:
    """Make MODEL's previous champion the champion again."""
    channel, s = stub(ctx)
    async with channel:
        result = await s.RollbackChampion(pb.RollbackChampionRequest(model_name=model,
                                                                     ))
    console.print(f"{model}@champion -> {result.champion.version} (was {result.previous_version})")


@registry.command()
@click.argument("ref")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File to write "
              "(default: the registered file name, or MODEL-VERSION.bin).")
@click.pass_context
@run
async def download(ctx: click.Context, ref: str, output: Path | None) -> None:
    """Download the artifact of REF (MODEL:VERSION, MODEL@ALIAS or MODEL), checking its sha256."""
    async with client(ctx).open_download(*parts(ref)) as download:
        mv = download.version
        target = output or Path(mv.artifact.filename or f"{mv.model_name}-{mv.version}.bin")
        tmp = target.with_name(target.name + ".part")
        try:
            with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), console=console, transient=True) as progress, tmp.open("wb") as f:
                task = progress.add_task(f"{mv.model_name}:{mv.version}", total=mv.artifact.size_bytes)
                async for chunk in download.chunks():  # checks the sha256 at the end
                    f.write(chunk)
                    progress.advance(task, len(chunk))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    tmp.replace(target)
    console.print(f"wrote {target} ({mv.artifact.size_bytes} bytes, {version_line(mv)})")


@registry.command()
@click.argument("model")
@click.argument("mode", required=False, type=click.Choice(["manual", "automatic"]))
@click.pass_context
@run
async def policy(ctx: click.Context, model: str, mode: str | None) -> None:
    """Show MODEL's promotion policy, or set it to MODE (automatic: passing evaluations promote)."""
    channel, s = stub(ctx)
    async with channel:
        if mode:
            value = pb.PromotionMode.Value(f"PROMOTION_MODE_{mode.upper()}")
            result = await s.SetPromotionPolicy(pb.SetPromotionPolicyRequest(model_name=model, mode=value))
        else:
            result = await s.GetPromotionPolicy(pb.GetPromotionPolicyRequest(model_name=model))
    console.print(f"{model}: {pb.PromotionMode.Name(result.mode).removeprefix('PROMOTION_MODE_').lower()}")
