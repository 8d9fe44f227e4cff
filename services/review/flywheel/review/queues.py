"""The review app's use cases for work on the queues, free of HTTP, Kafka and SQL: the pages, the JSON API
and the reviews.requested consumer all come through here.

- Intake: a reviews.requested event becomes an item of its model's queue, once (the event id, the
  review id and the prediction's key are each enough to drop a repeat).
- Claim next: the most urgent item the reviewer may take, leased to them for `lease_seconds`. An
  abandoned lease expires and the item goes back to the queue. An item is held by one reviewer at a
  time, by two when it is double labelled (they label it independently).
- Decide: a label (predictive), or approve / correct / reject (answers). The decision that completes an
  item writes its events (feedback.received, reviews.completed) into the outbox in the same transaction,
  held until its undo window ends; two labels that disagree make a conflict instead, which a lead resolves.
- Undo: within `undo_seconds`, the reviewer takes a decision back; its held events are withdrawn from the
  outbox in the same transaction (if the relay has sent them already, the undo is refused: nothing
  published is ever contradicted). The item goes back to the reviewer.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from opentelemetry import trace
from prometheus_client import Counter
from psycopg import AsyncConnection

from flywheel.common.db import Database
from flywheel.common.errors import FailedPrecondition, InvalidArgument, NotFound
from flywheel.common.events import Event
from flywheel.common.outbox import enqueue, withdraw
from flywheel.review import store
from flywheel.review.access import Actor, Forbidden
from flywheel.review.feedback import decision_events, event_ids
from flywheel.review.intake import ANSWER, item_from_event
from flywheel.review.store import CONFLICT, DONE, OPEN, Decision, Item

tracer = trace.get_tracer(__name__)
ITEMS = Counter("flywheel_review_items_total", "reviews.requested events, by what became of them.",
                ["queue", "outcome"])
DECISIONS = Counter("flywheel_review_decisions_total", "Decisions taken, by queue and action.", ["queue", "action"])
OUTCOMES = Counter("flywheel_review_outcomes_total",
                   "Items completed (done), put in conflict, resolved, skipped or undone.", ["queue", "outcome"])
CLAIMS = Counter("flywheel_review_claims_total", "Claim-next calls, by outcome.", ["queue", "outcome"])

ACTIONS = ("approve", "correct", "reject")
ANSWER_LABELS = {"approve": "approved", "correct": "corrected", "reject": "rejected"}
# How many locked candidates claim-next examines before it reports the queue empty (each one examined
# was taken by a concurrent claim between the scan and the lock; a few is plenty).
CLAIM_ATTEMPTS = 20


@dataclass(frozen=True)
class WorkSettings:
    lease_seconds: float
    undo_seconds: float
    double_label_share: float
    max_text_chars: int
    # Queue -> [negative label name, positive label name].
    labels_for: Callable[[str], list[str]]


@dataclass(frozen=True)
class Claim:
    """An item leased to the caller, until `lease_expires_at`."""

    item: Item
    lease_expires_at: datetime


@dataclass(frozen=True)
class Verdict:
    """What a reviewer (or a resolving lead) says about an item. Predictive: `label`, one of the queue's
    label names. Answers: `action` approve, correct (with `corrected_completion`) or reject (with the
    reason in `comment`)."""

    label: str = ""
    action: str = ""
    corrected_completion: str = ""
    comment: str = ""


@dataclass(frozen=True)
class Decided:
    decision: Decision
    # open (waits for the second label), conflict or done.
    item_status: str


class ReviewQueues:
    def __init__(self, db: Database, settings: WorkSettings) -> None:
        self.db = db
        self.settings = settings

    # -- intake -------------------------------------------------------------------------------------

    async def intake(self, conn: AsyncConnection, events: list[Event]) -> int:
        """Add the items of new reviews.requested events (inside the consumer's transaction, which records
        the event ids); returns how many were added. A bad event raises PoisonEvent (dead-lettered)."""
        items = {}
        for event in events:
            item = item_from_event(event, self.settings.double_label_share)
            items.setdefault(item.review_id, item)
        by_key = {}
        for item in items.values():  # the same prediction twice in one batch: the first one
            by_key.setdefault(item.item_key, item)
        added = await store.add_items(conn, list(by_key.values()))
        queues = {i.queue for i in by_key.values()}
        if len(queues) == 1:
            queue = next(iter(queues))
            ITEMS.labels(queue, "queued").inc(added)
            ITEMS.labels(queue, "duplicate").inc(len(events) - added)
        else:
            ITEMS.labels("*", "queued").inc(added)
            ITEMS.labels("*", "duplicate").inc(len(events) - added)
        return added

    # -- work ---------------------------------------------------------------------------------------

    async def current(self, actor: Actor, queue: str) -> Claim | None:
        """The item the actor holds in `queue` now, if any (nothing changes)."""
        actor.require_work(queue)
        async with self.db.connection() as conn:
            item = await store.current_lease(conn, actor.name, queue)
        return Claim(item, item.lease_expires_at) if item and item.lease_expires_at else None

    async def claim_next(self, actor: Actor, queue: str) -> Claim | None:
        """The item the actor holds in `queue` (its lease renewed), else the next one it may take, leased
        to it; None when there is nothing for it."""
        actor.require_work(queue)
        seconds = self.settings.lease_seconds
        async with self.db.connection() as conn, conn.transaction():
            held = await store.renew_held(conn, actor.name, queue, seconds)
            if held is not None and held.lease_expires_at is not None:
                CLAIMS.labels(queue, "held").inc()
                return Claim(held, held.lease_expires_at)
            passed: list[str] = []
            for _ in range(CLAIM_ATTEMPTS):
                item = await store.lock_next_candidate(conn, queue, actor.name, passed)
                if item is None:
                    break
                # The scan's snapshot may predate a claim that committed before we took the lock: look again.
                if not await store.still_free(conn, item.id, actor.name):
                    passed.append(item.id)
                    continue
                expires = await store.lease(conn, item.id, actor.name, queue, seconds)
                CLAIMS.labels(queue, "claimed").inc()
                return Claim(item, expires)
            if not await store.queue_exists(conn, queue):
                raise NotFound(f"no queue {queue!r} (queues are made by the first review request for a model)")
        CLAIMS.labels(queue, "empty").inc()
        return None

    async def item(self, actor: Actor, item_id: str) -> tuple[Item, list[Decision]]:
        """An item and its standing decisions, for someone who works its queue."""
        async with self.db.connection() as conn:
            item = await store.get_item(conn, item_id)
            if item is None:
                raise NotFound(f"no item {item_id!r}")
            actor.require_work(item.queue)
            decisions = await store.active_decisions(conn, item_id)
        if not actor.may_lead(item.queue):  # a reviewer does not see the other label of a double-labelled item
            decisions = [d for d in decisions if d.reviewer == actor.name]
        return item, decisions

    async def renew(self, actor: Actor, item_id: str) -> datetime:
        async with self.db.connection() as conn:
            expires = await store.renew(conn, item_id, actor.name, self.settings.lease_seconds)
        if expires is None:
            raise FailedPrecondition("you do not hold this item (its lease expired?): claim the next item")
        return expires

    async def skip(self, actor: Actor, item_id: str) -> Item:
        async with self.db.connection() as conn, conn.transaction():
            item = await self._locked(conn, item_id)
            actor.require_work(item.queue)
            if await store.lease_of(conn, item_id, actor.name) is None:
                raise FailedPrecondition("you do not hold this item: only the reviewer who claimed it can skip it")
            await store.drop_lease(conn, item_id, actor.name)
            await store.add_skip(conn, item_id, actor.name, item.queue)
        OUTCOMES.labels(item.queue, "skipped").inc()
        return item

    async def _decide(self, actor: Actor, item_id: str, verdict: Verdict) -> Decided:
        """Record the actor's decision on an item it holds; completes the item (events held in the outbox
        for the undo window) or, for the second label of a double-labelled item that disagrees, makes a
        conflict."""
        async with self.db.connection() as conn, conn.transaction():
            item = await self._locked(conn, item_id)
            actor.require_work(item.queue)
            held = await store.lease_of(conn, item_id, actor.name)
            if held is None:
                if await store.decided_by(conn, item_id, actor.name):
                    raise FailedPrecondition("you decided this item already (undo your decision to change it)")
                raise FailedPrecondition("you do not hold this item: claim it first (claim next)")
            if item.status != OPEN:
                raise FailedPrecondition(f"the item is {item.status} already")
            if not held["active"] and \
                    item.labels_done + await store.others_holding(conn, item_id, actor.name) >= item.labels_needed:
                await store.drop_lease(conn, item_id, actor.name)
                raise FailedPrecondition("your lease on this item expired and another reviewer has it now")
            decision = self._decision(item, actor, verdict, resolution=False, claimed_at=held["claimed_at"])
            item.labels_done += 1
            reviewers: list[str] = []
            if item.labels_done >= item.labels_needed:
                standing = [d for d in await store.active_decisions(conn, item_id) if not d.resolution] \
                    if item.labels_needed > 1 else []
                if all(d.category == decision.category for d in standing):
                    reviewers = sorted({actor.name, *(d.reviewer for d in standing)})
                    decision.event_ids = event_ids(decision.id)
                else:
                    item.status = CONFLICT
                    OUTCOMES.labels(item.queue, "conflict").inc()
            decision = await store.add_decision(conn, decision, self.settings.undo_seconds)
            if reviewers:
                await self._complete(conn, item, decision, reviewers)
            # Drops the reviewer's lease, and every lease of an item that left the queue.
            await store.settle(conn, item, actor.name)
        DECISIONS.labels(item.queue, decision.action).inc()
        return Decided(decision, item.status)

    async def _resolve(self, actor: Actor, item_id: str, verdict: Verdict) -> Decided:
        """A lead's final decision on a conflict (its events are held for the undo window too)."""
        async with self.db.connection() as conn, conn.transaction():
            item = await self._locked(conn, item_id)
            actor.require_lead(item.queue)
            if item.status != CONFLICT:
                raise FailedPrecondition(f"the item is {item.status}, not in conflict: nothing to resolve")
            decision = self._decision(item, actor, verdict, resolution=True)
            decision.event_ids = event_ids(decision.id)
            decision = await store.add_decision(conn, decision, self.settings.undo_seconds)
            await self._complete(conn, item, decision, [actor.name])
            await store.set_item_state(conn, item)
        OUTCOMES.labels(item.queue, "resolved").inc()
        return Decided(decision, item.status)

    async def _undo(self, actor: Actor, decision_id: str) -> Item:
        """Take back the actor's decision within its undo window. The events of the item's final decision
        are withdrawn from the outbox in the same transaction; when the relay sent them already the undo is
        refused and nothing changes. The item goes back to the actor (a resolution: back to conflict)."""
        async with self.db.connection() as conn, conn.transaction():
            decision = await store.get_decision(conn, decision_id)
            if decision is None:
                raise NotFound(f"no decision {decision_id!r}")
            if decision.reviewer != actor.name:
                raise Forbidden(f"only {decision.reviewer} can undo their decision")
            item = await self._locked(conn, decision.item_id)
            if not await store.undoable(conn, decision_id):
                raise FailedPrecondition("this decision can no longer be undone: its undo window has passed"
                                         if decision.undone_at is None else "this decision was undone already")
            if item.final_decision_id is not None:
                final = await store.get_decision(conn, item.final_decision_id)
                assert final is not None
                if await withdraw(conn, final.event_ids) < len(final.event_ids):
                    raise FailedPrecondition("too late to undo: the decision's events were published already")
                if final.resolution and final.id != decision_id:
                    await store.mark_undone(conn, final.id)  # it resolved a conflict that is gone with this label
                item.final_decision_id, item.completed_at = None, None
            await store.mark_undone(conn, decision_id)
            if decision.resolution:
                item.status = CONFLICT
            else:
                item.labels_done -= 1
                item.status = OPEN
                await store.drop_other_leases(conn, actor.name, item.queue, keep=item.id)
                await store.lease(conn, item.id, actor.name, item.queue, self.settings.lease_seconds)
            await store.set_item_state(conn, item)
        OUTCOMES.labels(item.queue, "undone").inc()
        return item

    async def decide(self, actor: Actor, item_id: str, verdict: Verdict) -> Decided:
        """Record the actor's decision on an item it holds (see `_decide`); a span, so the events the decision
        writes carry its trace."""
        with tracer.start_as_current_span("review.decide", attributes={"review.item_id": item_id,
                                                                       "review.reviewer": actor.name}):
            return await self._decide(actor, item_id, verdict)

    async def resolve(self, actor: Actor, item_id: str, verdict: Verdict) -> Decided:
        """A lead's final decision on a conflict (see `_resolve`), in a span."""
        with tracer.start_as_current_span("review.resolve", attributes={"review.item_id": item_id,
                                                                        "review.reviewer": actor.name}):
            return await self._resolve(actor, item_id, verdict)

    async def undo(self, actor: Actor, decision_id: str) -> Item:
        """Take back the actor's decision (see `_undo`), in a span."""
        with tracer.start_as_current_span("review.undo", attributes={"review.decision_id": decision_id,
                                                                     "review.reviewer": actor.name}):
            return await self._undo(actor, decision_id)

    async def last_undoable(self, actor: Actor, queue: str | None = None) -> Decision | None:
        async with self.db.connection() as conn:
            return await store.last_undoable(conn, actor.name, queue)

    async def conflicts(self, actor: Actor, queue: str | None = None) -> list[tuple[Item, list[Decision]]]:
        """Open conflicts in the queues the actor leads (or one of them), with both labels."""
        actor.require_lead(queue)
        async with self.db.connection() as conn:
            items = await store.conflicts(conn, [queue] if queue else None)
            items = [i for i in items if actor.may_lead(i.queue)]
            return [(i, await store.active_decisions(conn, i.id)) for i in items]

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    async def _locked(conn: AsyncConnection, item_id: str) -> Item:
        item = await store.get_item(conn, item_id, lock=True)
        if item is None:
            raise NotFound(f"no item {item_id!r}")
        return item

    async def _complete(self, conn: AsyncConnection, item: Item, decision: Decision, reviewers: list[str]) -> None:
        """Make `decision` (stored with its event ids) the item's final one: its events into the outbox, held
        until its undo window ends."""
        assert decision.decided_at is not None and decision.undo_until is not None
        events = decision_events(item, decision, reviewers, decision.decided_at)
        assert [e.id for e in events] == decision.event_ids
        for event in events:
            await enqueue(conn, event, not_before=decision.undo_until)
        item.status, item.final_decision_id, item.completed_at = DONE, decision.id, decision.decided_at
        OUTCOMES.labels(item.queue, "done").inc()

    def _decision(self, item: Item, actor: Actor, verdict: Verdict, *, resolution: bool,
                  claimed_at: datetime | None = None) -> Decision:
        """The decision a verdict makes on an item; InvalidArgument when it does not fit the item."""
        limit = self.settings.max_text_chars
        comment = verdict.comment.strip()
        if len(comment) > limit:
            raise InvalidArgument(f"comment is {len(comment)} characters, more than the {limit} allowed")
        base = dict(id=str(uuid.uuid4()), item_id=item.id, queue=item.queue, reviewer=actor.name,
                    resolution=resolution, claimed_at=claimed_at, comment=comment)
        if item.kind == ANSWER:
            action = verdict.action.strip().lower()
            if action not in ACTIONS:
                raise InvalidArgument(f"action must be one of {', '.join(ACTIONS)} for an answer, got "
                                      f"{verdict.action!r}" + (" (a label is for predictive items)"
                                                               if verdict.label else ""))
            corrected = verdict.corrected_completion.strip() if action == "correct" else ""
            if action == "correct":
                if not corrected:
                    raise InvalidArgument("corrected_completion is empty: a correction needs the better answer")
                if corrected == str(item.content.get("completion", "")).strip():
                    raise InvalidArgument("corrected_completion is the answer as it was: approve it instead")
                if len(corrected) > limit:
                    raise InvalidArgument(f"corrected_completion is {len(corrected)} characters, more than the "
                                          f"{limit} allowed")
            if action == "reject" and not comment:
                raise InvalidArgument("comment is empty: a rejection needs a reason")
            return Decision(**base, action=action, category=action, label={"text": ANSWER_LABELS[action]},
                            corrected_completion=corrected)
        names = self.settings.labels_for(item.queue)
        chosen = verdict.label.strip().lower()
        if chosen not in [n.lower() for n in names]:
            raise InvalidArgument(f"label must be one of {', '.join(names)} for queue {item.queue!r}, got "
                                  f"{verdict.label!r}" + (" (actions are for answers)" if verdict.action else ""))
        positive = chosen == names[1].lower()
        return Decision(**base, action="label", category=names[1] if positive else names[0],
                        label={"flag": positive})
