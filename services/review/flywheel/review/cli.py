"""`flywheel review ...`: users, queues, agreement and exports from a terminal, through the review app's JSON
API with the caller's bearer token (FLYWHEEL_TOKEN, else the admin token `make run` wrote).

    flywheel review user-create alice --role reviewer --queues fraud     # asks for the password
    flywheel review users
    flywheel review queues
    flywheel review quality
    flywheel review export --format parquet --queue fraud -o fraud.parquet
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from flywheel.common.cli import client_auth


def default_url() -> str:
    from flywheel.review.config import ReviewSettings

    settings = ReviewSettings(kafka_bootstrap="-", database_url="-")  # only the address is read here
    host = "127.0.0.1" if settings.http_host == "0.0.0.0" else settings.http_host
    return f"http://{host}:{settings.http_port}"


def call(url: str, method: str, path: str, body: dict[str, Any] | None = None,
         query: dict[str, str] | None = None) -> bytes:
    token = client_auth().token
    if query:
        path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
    request = urllib.request.Request(url.rstrip("/") + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise click.ClickException(f"{exc.code}: {message}") from None
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach the review app at {url}: {exc.reason}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", default=None, help="The review app (default http://<FLYWHEEL_REVIEW_HTTP_HOST>:<PORT>).")
@click.pass_context
def review(ctx: click.Context, url: str | None) -> None:
    """Human review: users, queues, agreement, exports (the review app's JSON API)."""
    ctx.obj = url or default_url()


@review.command("user-create")
@click.argument("username")
@click.option("--role", type=click.Choice(["reviewer", "lead", "admin"]), default="reviewer")
@click.option("--queues", default="", help="Queues (comma separated) the user works or leads; default all.")
@click.password_option(help="Asked for when not given.")
@click.pass_obj
def user_create(url: str, username: str, role: str, queues: str, password: str) -> None:
    """Create a user of the pages (a lead's token creates reviewers, an admin's anyone)."""
    body = {"username": username, "password": password, "role": role,
            "queues": [q.strip() for q in queues.split(",") if q.strip()]}
    user = json.loads(call(url, "POST", "/api/v1/users", body))
    click.echo(f"created {user['role']} {user['username']} (queues: {', '.join(user['queues']) or 'all'})")


@review.command("users")
@click.pass_obj
def users(url: str) -> None:
    """List users."""
    table = Table("user", "role", "queues", "created by", "disabled")
    for u in json.loads(call(url, "GET", "/api/v1/users")):
        table.add_row(u["username"], u["role"], ", ".join(u["queues"]) or "all", u["created_by"],
                      "yes" if u["disabled"] else "")
    Console().print(table)


@review.command("user-disable")
@click.argument("username")
@click.option("--enable", is_flag=True, help="Enable the user again instead.")
@click.pass_obj
def user_disable(url: str, username: str, enable: bool) -> None:
    """Disable a user (its sessions end), or enable it again."""
    user = json.loads(call(url, "POST", f"/api/v1/users/{urllib.parse.quote(username)}/"
                                        f"{'enable' if enable else 'disable'}"))
    click.echo(f"{user['username']}: {'disabled' if user['disabled'] else 'enabled'}")


@review.command("queues")
@click.pass_obj
def queues(url: str) -> None:
    """Queues: open items, work in progress, conflicts, done, the oldest open item's age."""
    table = Table("queue", "kind", "open", "in progress", "conflicts", "done", "oldest open (s)")
    for q in json.loads(call(url, "GET", "/api/v1/queues")):
        oldest = q["oldest_open_seconds"]
        table.add_row(q["queue"], q["kind"], str(q["open"]), str(q["in_progress"]), str(q["conflicts"]),
                      str(q["done"]), f"{oldest:.0f}" if oldest is not None else "-")
    Console().print(table)


@review.command("quality")
@click.pass_obj
def quality(url: str) -> None:
    """Agreement (Cohen's kappa) per queue and reviewer pair on double-labelled items."""
    body = json.loads(call(url, "GET", "/api/v1/quality"))
    table = Table("queue", "reviewers", "items", "agreed", "kappa")
    for name, a in body["queues"].items():
        table.add_row(name, "all", str(a["items"]), str(a["agreed"]), _kappa(a["kappa"]))
    for p in body["pairs"]:
        table.add_row(p["queue"], f"{p['reviewer']} · {p['other']}", str(p["items"]), str(p["agreed"]),
                      _kappa(p["kappa"]))
    Console().print(table)


def _kappa(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@review.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl")
@click.option("--queue", default="")
@click.option("--reviewer", default="")
@click.option("--since", default="", help="ISO time: decided at or after.")
@click.option("--until", default="", help="ISO time: decided before.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write (default: stdout).")
@click.pass_obj
def export(url: str, fmt: str, queue: str, reviewer: str, since: str, until: str, output: str | None) -> None:
    """Export decisions (JSON Lines or Parquet)."""
    data = call(url, "GET", "/api/v1/export", query={"format": fmt, "queue": queue, "reviewer": reviewer,
                                                      "since": since, "until": until})
    if output:
        with open(output, "wb") as f:
            f.write(data)
        click.echo(f"wrote {len(data)} bytes to {output}", err=True)
    else:
        sys.stdout.buffer.write(data)
