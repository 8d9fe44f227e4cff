"""Window assignment: which window each new row of a model version belongs to.

Pure functions, so the rule is testable without a database: the ingest applies them under a
row lock of the version, to rows that are new (replays were dropped before), which makes the
assignment deterministic and exactly-once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class Slot:
    """`count` consecutive new rows go to the window at `offset` (0 = the open one, 1 = the next new one...)."""

    offset: int
    count: int


def assign_by_count(open_rows: int, new_rows: int, window_size: int) -> list[Slot]:
    """Fill the open window (holding `open_rows`) up to `window_size`, then new windows in order."""
    if window_size <= 0:
        raise ValueError("window_size must be positive")
    slots: list[Slot] = []
    offset, room = 0, window_size - open_rows
    if room <= 0:  # a full open window (e.g. the size setting shrank): start a new one
        offset, room = 1, window_size
    while new_rows > 0:
        take = min(room, new_rows)
        slots.append(Slot(offset, take))
        new_rows -= take
        offset, room = offset + 1, window_size
    return slots


def closed_by_count(open_rows: int, slots: list[Slot], window_size: int) -> int:
    """How many windows (from offset 0 on) are full after the slots are applied."""
    fill: dict[int, int] = {}
    for slot in slots:
        fill[slot.offset] = fill.get(slot.offset, 0) + slot.count
    if slots and slots[0].offset == 0:
        fill[0] += open_rows
    return sum(1 for rows in fill.values() if rows >= window_size)


def bucket_start(ts: datetime, window_seconds: float) -> datetime:
    """Time mode: the start of the bucket holding `ts` (buckets are aligned to the Unix epoch)."""
    seconds = ts.timestamp()
    return datetime.fromtimestamp(seconds - seconds % window_seconds, UTC)


def bucket_closed(start: datetime, now: datetime, window_seconds: float, grace_seconds: float) -> bool:
    return now >= start + timedelta(seconds=window_seconds + grace_seconds)
