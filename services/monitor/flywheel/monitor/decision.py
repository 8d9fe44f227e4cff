"""The alert decision: hysteresis (N of the last M analyzed windows drifted) and cooldown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class WindowOutcome:
    window_id: str
    start: datetime
    drifted: bool


@dataclass(frozen=True)
class Decision:
    alert: bool
    drifted_of_last: int
    # Start of the earliest drifted window among the last M (the onset), when alerting.
    onset: datetime | None = None
    reason: str = ""


def decide(recent: Sequence[WindowOutcome], *, n: int, m: int, last_alert_at: datetime | None,
           now: datetime, cooldown_seconds: float) -> Decision:
    """`recent`: analyzed windows of one version, newest first. Alert when at least `n` of the
    newest `m` drifted, the newest one among them (one drifted window alone must not re-fire an
    old majority), and no alert in the last `cooldown_seconds`."""
    last = list(recent[:m])
    drifted = [w for w in last if w.drifted]
    count = len(drifted)
    if count < n:
        return Decision(False, count, reason=f"{count} of the last {len(last)} windows drifted (< {n})")
    if not last[0].drifted:
        return Decision(False, count, reason="the newest window did not drift")
    if last_alert_at is not None and now < last_alert_at + timedelta(seconds=cooldown_seconds):
        return Decision(False, count, reason="cooling down after the last alert")
    return Decision(True, count, onset=min(w.start for w in drifted), reason=f"{count} of the last {len(last)}")
