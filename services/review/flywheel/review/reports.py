"""What leads and reviewers read about the work: progress (queue depth and age, per-reviewer counts and
throughput), agreement on double-labelled items (Cohen's kappa per queue and per reviewer pair), and
exports of the decisions. Free of HTTP and SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flywheel.common.db import Database
from flywheel.common.errors import InvalidArgument
from flywheel.review import quality, store
from flywheel.review.access import Actor
from flywheel.review.intake import REASONS

EXPORT_PAGE = 1000


@dataclass
class QueueProgress:
    queue: str
    kind: str
    open: int
    labels_needed: int
    in_progress: int
    conflicts: int
    done: int
    double_labelled: int
    oldest_open_seconds: float | None
    last_received_at: datetime | None


@dataclass
class ReviewerProgress:
    reviewer: str
    decisions: int = 0
    # Decisions since the report's `since` (the last 24 hours).
    recent: int = 0
    last_hour: int = 0
    skips: int = 0
    median_seconds: float | None = None
    last_decided_at: datetime | None = None
    queues: dict[str, int] = field(default_factory=dict)


@dataclass
class Progress:
    since: datetime
    queues: list[QueueProgress]
    reviewers: list[ReviewerProgress]


@dataclass
class PairAgreement:
    queue: str
    reviewer: str
    other: str
    agreement: quality.Agreement


@dataclass
class Quality:
    queues: dict[str, quality.Agreement]
    pairs: list[PairAgreement]
    conflicts: dict[str, int]


@dataclass(frozen=True)
class ExportFilter:
    queue: str | None = None
    reviewer: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.since and self.until and self.since >= self.until:
            raise InvalidArgument(f"since ({self.since.isoformat()}) must be before until ({self.until.isoformat()})")


class Reports:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def progress(self, actor: Actor, hours: float = 24.0) -> Progress:
        """Queues the actor works, and every reviewer's counts there (a reviewer sees the team's too)."""
        since = datetime.now(UTC) - timedelta(hours=hours)
        async with self.db.connection() as conn:
            queue_rows = await store.queue_stats(conn)
            reviewer_rows = await store.reviewer_stats(conn, since)
        queues = [QueueProgress(
            queue=r["queue"], kind=r["kind"] or "", open=r["open"], labels_needed=int(r["labels_needed"]),
            in_progress=r["in_progress"], conflicts=r["conflicts"], done=r["done"],
            double_labelled=r["double_labelled"],
            oldest_open_seconds=float(r["oldest_open_s"]) if r["oldest_open_s"] is not None else None,
            last_received_at=r["last_received_at"]) for r in queue_rows if actor.may_work(r["queue"])]
        reviewers: dict[str, ReviewerProgress] = {}
        medians: dict[str, list[tuple[float, int]]] = {}
        for r in reviewer_rows:
            if not actor.may_work(r["queue"]):
                continue
            p = reviewers.setdefault(r["reviewer"], ReviewerProgress(r["reviewer"]))
            p.decisions += r["decisions"]
            p.recent += r["recent"]
            p.last_hour += r["last_hour"]
            p.skips += r["skips"]
            p.queues[r["queue"]] = r["decisions"]
            if r["last_decided_at"] and (p.last_decided_at is None or r["last_decided_at"] > p.last_decided_at):
                p.last_decided_at = r["last_decided_at"]
            if r["median_seconds"] is not None:
                medians.setdefault(r["reviewer"], []).append((float(r["median_seconds"]), r["decisions"]))
        for name, values in medians.items():  # across queues: weighted by decisions (an approximation)
            total = sum(n for _, n in values)
            reviewers[name].median_seconds = sum(m * n for m, n in values) / total if total else None
        return Progress(since, queues, sorted(reviewers.values(), key=lambda p: (-p.recent, p.reviewer)))

    async def quality(self, actor: Actor) -> Quality:
        """Agreement in the queues the actor leads."""
        actor.require_lead()
        async with self.db.connection() as conn:
            rows = await store.double_ratings(conn)
            stats = await store.queue_stats(conn)
        ratings = [quality.Rating(r["item_id"], r["queue"], r["reviewer"], r["category"])
                   for r in rows if actor.may_lead(r["queue"])]
        pairs = [PairAgreement(q, a, b, agreement)
                 for (q, a, b), agreement in quality.by_reviewer_pair(ratings).items()]
        return Quality(quality.by_queue(ratings), pairs,
                       {r["queue"]: r["conflicts"] for r in stats if actor.may_lead(r["queue"])})

    async def export(self, actor: Actor, flt: ExportFilter) -> AsyncIterator[dict[str, Any]]:
        """The standing decisions matching the filter, oldest first, as flat records (see export.py)."""
        if flt.queue:
            actor.require_lead(flt.queue)
            queues: list[str] | None = [flt.queue]
        else:
            actor.require_lead()
            async with self.db.connection() as conn:
                names = await store.queue_names(conn)
            queues = None if actor.is_admin or not actor.queues else [q for q in names if actor.may_lead(q)]
        after: tuple[datetime, str] | None = None
        while True:
            async with self.db.connection() as conn:
                rows = await store.export_page(conn, queues=queues, reviewer=flt.reviewer, since=flt.since,
                                               until=flt.until, after=after, limit=EXPORT_PAGE)
            for row in rows:
                yield record(row)
            if len(rows) < EXPORT_PAGE:
                return
            after = (rows[-1]["decided_at"], rows[-1]["decision_id"])


def record(row: dict[str, Any]) -> dict[str, Any]:
    """One exported decision: what was judged (model, request, row, content shown) and what was decided."""
    label = row["label"] or {}
    return {
        "decision_id": row["decision_id"], "item_id": row["item_id"], "review_id": row["review_id"],
        "queue": row["queue"], "kind": row["kind"], "request_id": row["request_id"], "entity_id": row["entity_id"],
        "reason": REASONS.get(row["reason"], str(row["reason"])), "model_name": row["model_name"],
        "model_version": row["model_version"], "prompt_name": row["prompt_name"],
        "prompt_version": row["prompt_version"], "reviewer": row["reviewer"], "action": row["action"],
        "category": row["category"], "label_flag": label.get("flag"), "label_text": label.get("text"),
        "corrected_completion": row["corrected_completion"], "comment": row["comment"],
        "resolution": row["resolution"], "final": bool(row["final"]), "double_labelled": row["labels_needed"] == 2,
        "item_status": row["item_status"], "claimed_at": row["claimed_at"], "decided_at": row["decided_at"],
        "event_time": row["event_time"], "requested_at": row["requested_at"], "entity_keys": row["entity_keys"],
        "content": row["content"],
    }
