"""The session's simulated timeline and the one map from simulated to wall-clock time.

The generator works in simulated days. Features are computed in simulated time (so the 24 h / 30 d
aggregates are the ones the world produces), then every timestamp is re-stamped with one linear map
`wall = wall_anchor + (sim - sim_anchor) / compression` (`TimeMap`). History before the anchor is
published at once (bootstrap); live payments are scored when the wall clock reaches their mapped time.
The clock stands still while bootstrapping: the map is re-anchored at the start of the live loop
(`TimeMap.resumed`), so training time does not turn into a backlog.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from payments_demo.config import DriverConfig
from payments_demo.generator import Transaction, generate
from payments_demo.pipeline import CUSTOMER_STATS_LEAD, FeatureRow, feature_rows

SIM_START = datetime(2026, 1, 1, tzinfo=UTC)
DAY_SECONDS = 86_400.0
# Phases of the scripted scenario, in order.
BOOTSTRAP, STABLE, DRIFT = "bootstrap", "stable", "drift"


@dataclass(frozen=True)
class TimeMap:
    """One linear map from simulated time to wall-clock time: `wall = wall_anchor + (sim - sim_anchor) / compression`.

    `compression` is simulated seconds per wall second (1440 = one simulated day per wall minute).
    """

    wall_anchor: datetime
    sim_anchor: datetime
    compression: float

    def __post_init__(self) -> None:
        if not self.compression > 0:
            raise ValueError(f"compression must be positive, got {self.compression}")

    @classmethod
    def day_per(cls, wall_seconds_per_day: float, *, wall_anchor: datetime, sim_anchor: datetime) -> TimeMap:
        """The map where one simulated day lasts `wall_seconds_per_day` wall seconds."""
        return cls(wall_anchor, sim_anchor, DAY_SECONDS / wall_seconds_per_day)

    def to_wall(self, sim: datetime) -> datetime:
        return self.wall_anchor + (sim - self.sim_anchor) / self.compression

    def to_sim(self, wall: datetime) -> datetime:
        return self.sim_anchor + (wall - self.wall_anchor) * self.compression

    def wall_duration(self, sim: timedelta) -> timedelta:
        return sim / self.compression

    def resumed(self, at: datetime) -> TimeMap:
        """The same map, with simulated time standing still from `sim_anchor` until the wall time `at`."""
        return replace(self, wall_anchor=at)


def restamp_row(row: FeatureRow, time_map: TimeMap) -> FeatureRow:
    """`row` with its event time mapped to the wall clock.

    A `customer_stats` row is stamped `CUSTOMER_STATS_LEAD` before its payment; mapping compresses that
    lead below a microsecond, so the lead is re-applied after mapping the payment's own time: the row
    stays strictly before its payment (and after the customer's previous payment's row).
    """
    if row.view == "customer_stats":
        when = time_map.to_wall(row.event_time + CUSTOMER_STATS_LEAD) - CUSTOMER_STATS_LEAD
    else:
        when = time_map.to_wall(row.event_time)
    return replace(row, event_time=when)


@dataclass
class Timeline:
    """Every payment of the session and the pipeline's feature rows, in simulated time."""

    transactions: list[Transaction]
    rows: list[FeatureRow]
    # Published history starts here; live traffic starts at `live_start`; the drift at `onset`.
    history_start: datetime
    live_start: datetime
    onset: datetime | None
    end: datetime

    def phase(self, sim: datetime) -> str:
        if sim < self.live_start:
            return BOOTSTRAP
        return DRIFT if self.onset is not None and sim >= self.onset else STABLE


def build_timeline(config: DriverConfig, session: str) -> Timeline:
    """Generate warm-up + history + live days; payment ids carry the session tag, so a restarted driver
    publishes new payments instead of colliding with the ones (and the label event ids) of a previous run."""
    live_start_day = config.warmup_days + config.history_days
    onset_day = live_start_day + config.stable_days
    days = onset_day + config.drift_days
    drifting = config.drift != "none" and config.drift_days > 0
    txns = generate(config.scenario(), seed=config.seed, start=SIM_START, days=days,
                    transactions_per_day=config.transactions_per_day, customers=config.customers,
                    merchants=config.merchants, onset_day=onset_day if drifting else days)
    for t in txns:
        t.transaction_id = f"t{session}-{t.transaction_id.removeprefix('t-')}"
    return Timeline(
        transactions=txns, rows=list(feature_rows(txns)),
        history_start=SIM_START + timedelta(days=config.warmup_days),
        live_start=SIM_START + timedelta(days=live_start_day),
        onset=SIM_START + timedelta(days=onset_day) if drifting else None,
        end=SIM_START + timedelta(days=days))
