"""The `flywheel` command. Each service adds its subcommands through the `flywheel.cli` entry
point group (e.g. `flywheel registry ...`); `flywheel auth ...` manages the platform's tokens."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from flywheel.common.rpc import ClientAuth
from flywheel.common.settings import ServiceSettings

ADMIN_TOKEN_FILE = "admin.token"


class PluginGroup(click.Group):
    """A click group whose subcommands are the installed `flywheel.cli` entry points."""

    def _plugins(self) -> dict[str, object]:
        return {ep.name: ep for ep in entry_points(group="flywheel.cli")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in (plugins := self._plugins()):
            command = plugins[name].load()  # type: ignore[attr-defined]
        return command


def client_auth() -> ClientAuth:
    """The credentials a command line client presents: FLYWHEEL_TOKEN (and the FLYWHEEL_TLS_* files),
    else the admin token `make run` wrote to <FLYWHEEL_HOME>/admin.token, when it is readable."""
    settings = ServiceSettings()
    auth = settings.client_auth()
    if auth.token:
        return auth
    path = Path(settings.home) / ADMIN_TOKEN_FILE
    try:
        token = path.read_text().strip()
    except OSError:
        return auth
    return ClientAuth(token=token, ca_file=auth.ca_file, cert_file=auth.cert_file, key_file=auth.key_file)


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flywheel-common")
def main() -> None:
    """Flywheel: the closed MLOps/LLMOps loop. Each service's commands are below.

    Commands that call a service authenticate with FLYWHEEL_TOKEN, or else with the admin token
    that `make run` writes to .flywheel/admin.token.
    """


@main.group(context_settings={"help_option_names": ["-h", "--help"]})
def auth() -> None:
    """Bearer tokens: create, list, revoke (writes the `auth` schema of FLYWHEEL_DATABASE_URL).

    Roles: admin (everything), operator (promote, rollback, policies, runs), service (service to
    service), reviewer (review work), lead (leads reviewers), reader (get and list), predict (the inference
    data plane).
    """


def _store():  # type: ignore[no-untyped-def]
    from flywheel.common.auth import TokenStore
    from flywheel.common.db import Database

    settings = ServiceSettings()
    if not settings.database_url:
        raise click.ClickException("FLYWHEEL_DATABASE_URL is not set and no embedded stack runs in "
                                   f"{settings.home}: start `make run` or point it at PostgreSQL")
    return TokenStore(Database(settings.database_url, "auth", min_size=1, max_size=1))


async def _with_store(action):  # type: ignore[no-untyped-def]
    store = _store()
    await store.db.pool.open(wait=True, timeout=30)
    try:
        await store.migrate()
        return await action(store)
    finally:
        await store.db.close()


def _run(coro):  # type: ignore[no-untyped-def]
    from flywheel.common.errors import FlywheelError

    try:
        return asyncio.run(coro)
    except FlywheelError as exc:
        raise click.ClickException(str(exc)) from None


@auth.command("create-token")
@click.option("--principal", required=True, help="Who the token is for (recorded in audit trails).")
@click.option("--role", "role_names", multiple=True, required=True,
              type=click.Choice(["admin", "operator", "service", "reviewer", "lead", "reader", "predict"]),
              help="A role of the token (repeatable).")
@click.option("--expires-in-days", type=float, default=None, help="Expire after this many days (default: never).")
@click.option("--description", default="", help="A note stored with the token.")
@click.option("--from-stdin", is_flag=True,
              help="Register the token read from stdin (e.g. a Kubernetes Secret's value) instead of a random one.")
def create_token(principal: str, role_names: tuple[str, ...], expires_in_days: float | None, description: str,
                 from_stdin: bool) -> None:
    """Create a token and print it (only now: the database keeps its sha256).

    With --from-stdin the given token is registered, and running it again is a no-op as long as the
    token exists for the same principal and roles (deployment jobs rerun it on every rollout).
    """
    from flywheel.common.auth import roles
    from flywheel.common.errors import AlreadyExists

    given = sys.stdin.read().strip() if from_stdin else None
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None

    async def create(store):  # type: ignore[no-untyped-def]
        try:
            return await store.create(principal, role_names, created_by=f"cli:{os.environ.get('USER', 'unknown')}",
                                      expires_at=expires, description=description, token=given)
        except AlreadyExists:
            existing = await store.lookup(given) if given else None
            if existing is None or existing.name != principal or existing.roles != roles(*role_names):
                raise AlreadyExists("this token is registered already, for another principal or other roles, "
                                    "or revoked: issue a new secret") from None
            click.echo(f"token {existing.token_id} for {principal} exists already", err=True)
            return None

    created = _run(_with_store(create))
    if created is None:
        return
    secret, info = created
    click.echo(f"token {info.id} for {info.principal} ({', '.join(sorted(info.roles))})", err=True)
    if not from_stdin:
        click.echo(secret)


@auth.command("list-tokens")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked tokens.")
def list_tokens(include_revoked: bool) -> None:
    """List tokens (never their secrets)."""
    infos = _run(_with_store(lambda store: store.list(include_revoked)))
    table = Table("id", "principal", "roles", "created", "expires", "revoked", "description")
    for i in infos:
        table.add_row(i.id, i.principal, ", ".join(sorted(i.roles)), f"{i.created_at:%Y-%m-%d %H:%M}",
                      f"{i.expires_at:%Y-%m-%d %H:%M}" if i.expires_at else "",
                      f"{i.revoked_at:%Y-%m-%d %H:%M}" if i.revoked_at else "", i.description)
    Console().print(table if infos else "no tokens")


@auth.command("revoke-token")
@click.argument("token_id")
def revoke_token(token_id: str) -> None:
    """Revoke the token TOKEN_ID (services stop accepting it within seconds)."""
    info = _run(_with_store(lambda store: store.revoke(token_id)))
    click.echo(f"revoked {info.id} ({info.principal})")


if __name__ == "__main__":
    main()
