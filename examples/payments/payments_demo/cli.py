"""The demo's command line: generate a scenario and publish its feature rows and labels to Kafka."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from payments_demo.generator import SCENARIOS, Transaction, fraud_rate, generate, get_scenario
from payments_demo.pipeline import TRANSACTIONS_TOPIC, all_events, publish, publish_transactions

console = Console()


def _parse_start(_ctx: click.Context, _param: click.Parameter, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO date or datetime (e.g. 2026-01-01)") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _default_bootstrap() -> str:
    """FLYWHEEL_KAFKA_BOOTSTRAP, else the embedded stack's broker (.flywheel/stack.json)."""
    from flywheel.common.settings import ServiceSettings

    return ServiceSettings().kafka_bootstrap


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Flywheel's payments demo: card payments with fraud labels that arrive late (chargebacks)."""


@main.command("scenarios")
def list_scenarios() -> None:
    """List the scenarios."""
    table = Table("scenario", "what happens", "label delay (fraud / legit, days)")
    for s in SCENARIOS.values():
        table.add_row(s.name, s.description, f"{s.chargeback_days[0]:g}-{s.chargeback_days[1]:g} / "
                                             f"{s.settlement_days[0]:g}-{s.settlement_days[1]:g}")
    console.print(table)


@main.command("generate")
@click.option("--scenario", "scenario_name", type=click.Choice(list(SCENARIOS)), default="stable", show_default=True)
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True, help="Simulated days.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--start", default="2026-01-01", show_default=True, callback=_parse_start,
              help="First simulated day (ISO date or datetime; UTC unless it says otherwise).")
@click.option("--transactions-per-day", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--customers", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--merchants", type=click.IntRange(min=14), default=60, show_default=True)
@click.option("--onset-day", type=click.IntRange(min=0), default=None,
              help="Day the shift starts (shift scenarios; default: half-way).")
@click.option("--all-labels", is_flag=True,
              help="Also publish labels observed after the simulated period (default: only those known by its end).")
@click.option("--bootstrap", default=None, metavar="HOST:PORT[,...]",
              help="Kafka bootstrap servers (default: FLYWHEEL_KAFKA_BOOTSTRAP or the embedded stack's broker).")
@click.option("--dry-run", is_flag=True, help="Generate and summarize; publish nothing.")
def generate_command(scenario_name: str, days: int, seed: int, start: datetime, transactions_per_day: int,
                     customers: int, merchants: int, onset_day: int | None, all_labels: bool, bootstrap: str | None,
                     dry_run: bool) -> None:
    """Simulate a scenario and publish its feature rows (features.updates), labels (feedback.received) and the
    raw payments to score (payments.transactions)."""
    spec = get_scenario(scenario_name)
    onset = (days // 2 if onset_day is None else onset_day) if spec.has_onset else None
    end = start + timedelta(days=days)
    with console.status(f"simulating {days} days of {scenario_name}..."):
        transactions = generate(spec, seed=seed, start=start, days=days, transactions_per_day=transactions_per_day,
                                customers=customers, merchants=merchants, onset_day=onset_day)
        events = all_events(transactions, labels_observed_before=None if all_labels else end)
    _print_summary(transactions, events, spec.name, start, end, onset)
    if dry_run:
        console.print("dry run: nothing published")
        return
    bootstrap = bootstrap or _default_bootstrap()
    if not bootstrap:
        raise click.ClickException("no Kafka: pass --bootstrap, set FLYWHEEL_KAFKA_BOOTSTRAP, or start the embedded "
                                   "stack (make run) so .flywheel/stack.json exists")
    with Progress(TextColumn("publishing to " + bootstrap), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("publish", total=len(events))
        published = asyncio.run(publish(events, bootstrap, on_progress=lambda n: progress.advance(task, n)))
    payments = asyncio.run(publish_transactions(transactions, bootstrap))
    console.print(f"published {published} events and {payments} raw payments ({TRANSACTIONS_TOPIC}) to {bootstrap}")


def _print_summary(transactions: list[Transaction], events: list, scenario: str, start: datetime, end: datetime,
                   onset: int | None) -> None:
    per_topic = Counter(e.topic.name for e in events)
    push_sources = Counter(e.payload.push_source for e in events if e.topic.name == "features.updates")
    table = Table(title=f"payments demo: {scenario}", show_header=False)
    table.add_row("period", f"{start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC")
    table.add_row("transactions", f"{len(transactions):,}")
    frauds = sum(t.is_fraud for t in transactions)
    table.add_row("fraud", f"{frauds:,} ({fraud_rate(transactions):.2%})")
    if onset is not None:
        cut = start + timedelta(days=onset)
        before = [t for t in transactions if t.event_time < cut]
        after = [t for t in transactions if t.event_time >= cut]
        table.add_row("fraud before / after onset", f"{fraud_rate(before):.2%} / {fraud_rate(after):.2%} "
                                                    f"(onset day {onset}, {cut:%Y-%m-%d})")
    labels = per_topic.get("feedback.received", 0)
    table.add_row("labels", f"{labels:,} published, {len(transactions) - labels:,} observed after the period")
    table.add_row("feature rows", ", ".join(f"{n:,} {name}" for name, n in sorted(push_sources.items())))
    table.add_row("events", ", ".join(f"{n:,} {name}" for name, n in sorted(per_topic.items())))
    console.print(table)


@main.command("drive", context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
              add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def drive_command(args: tuple[str, ...]) -> None:
    """Live payments through a running Flywheel, with a status page (see `drive --help`)."""
    from payments_demo.live import main as drive

    raise SystemExit(drive(list(args)))
