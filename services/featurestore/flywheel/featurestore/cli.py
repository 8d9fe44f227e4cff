"""`flywheel featurestore ...`: list views, read online features, materialize."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from flywheel.common import rpc
from flywheel.common.cli import client_auth
from flywheel.common.errors import InvalidArgument
from flywheel.proto.events.v1.features_pb2 import FeatureValue
from flywheel.proto.featurestore.v1 import feature_store_service_pb2 as pb
from flywheel.proto.featurestore.v1 import feature_store_service_pb2_grpc as pb_grpc

console = Console()


def run(func: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async command; show gRPC and input errors as one red line and exit 1 (2 for bad input)."""

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
    return wrapper


def stub(ctx: click.Context) -> tuple[grpc.aio.Channel, pb_grpc.FeatureStoreServiceStub]:
    channel = rpc.channel(ctx.obj["address"], default_timeout=ctx.obj["timeout"], auth=client_auth())
    return channel, pb_grpc.FeatureStoreServiceStub(channel)


def key_value(text: str) -> tuple[str, FeatureValue]:
    """`name=value`: an integer if it parses as one, else a string."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise InvalidArgument(f"entity key {text!r} is not NAME=VALUE")
    try:
        return name, FeatureValue(int64_value=int(value))
    except ValueError:
        return name, FeatureValue(string_value=value)


def timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def shown(value: FeatureValue) -> str:
    kind = value.WhichOneof("value")
    return "null" if kind is None else str(getattr(value, kind))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--address", envvar="FLYWHEEL_FEATURESTORE_ADDR", default="127.0.0.1:50052", show_default=True,
              help="Feature store gRPC address (env FLYWHEEL_FEATURESTORE_ADDR).")
@click.option("--timeout", default=60.0, show_default=True, help="Deadline of each call, in seconds.")
@click.pass_context
def featurestore(ctx: click.Context, address: str, timeout: float) -> None:
    """Feature store: the Feast repo's views, online features, materialization."""
    ctx.obj = {"address": address, "timeout": timeout}


@featurestore.command()
@click.pass_context
@run
async def views(ctx: click.Context) -> None:
    """List the feature views (with their features and types) and the feature services."""
    channel, s = stub(ctx)
    async with channel:
        response = await s.ListFeatureViews(pb.ListFeatureViewsRequest())
    table = Table("view", "entities", "features", "ttl", "online", "push source")
    for view in response.feature_views:
        table.add_row(view.name, ", ".join(view.entities),
                      ", ".join(f"{f.name}:{f.dtype}" for f in view.features),
                      str(view.ttl.ToTimedelta()) if view.HasField("ttl") else "", "yes" if view.online else "no",
                      view.push_source)
    console.print(table)
    for service in response.feature_services:
        console.print(f"[bold]{service.name}[/bold]: {', '.join(service.features)}")


@featurestore.command()
@click.argument("features")
@click.argument("keys", nargs=-1, required=True, metavar="NAME=VALUE...")
@click.pass_context
@run
async def online(ctx: click.Context, features: str, keys: tuple[str, ...]) -> None:
    """Online features of one entity: FEATURES is a feature service, or comma-separated view:feature refs."""
    selection = (pb.FeatureSelection(features=pb.FeatureRefs(refs=features.split(","))) if ":" in features
                 else pb.FeatureSelection(feature_service=features))
    row = pb.EntityRow(keys=dict(key_value(k) for k in keys))
    channel, s = stub(ctx)
    async with channel:
        response = await s.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(features=selection, entity_rows=[row]))
    for name, value, status in zip(response.feature_names, response.rows[0].values, response.rows[0].statuses,
                                   strict=True):
        state = pb.FeatureStatus.Name(status).removeprefix("FEATURE_STATUS_")
        console.print(f"  {name:<40} {shown(value):<20} {state}")


@featurestore.command()
@click.option("--days", default=1.0, show_default=True, help="Materialize the last DAYS days.")
@click.option("--view", "views_", multiple=True, help="Only this feature view (repeatable); default: all online.")
@click.pass_context
@run
async def materialize(ctx: click.Context, days: float, views_: tuple[str, ...]) -> None:
    """Copy the latest offline values of the last DAYS days into the online store."""
    end = datetime.now(UTC)
    request = pb.MaterializeRequest(start_time=timestamp(end - timedelta(days=days)),
                                    end_time=timestamp(end), feature_views=list(views_))
    channel, s = stub(ctx)
    async with channel:
        response = await s.Materialize(request)
    console.print(f"materialized {', '.join(response.feature_views) or 'nothing'}")
