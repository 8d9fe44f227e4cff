"""The review app's database: queues and items, leases, skips, decisions, users and sessions (SQL only).

Concurrency: every change to an item's work (a claim, a decision, a skip, an undo, a resolution) first
locks the item's row (`FOR UPDATE`), so two claims of one item, or a claim and a decision, never
interleave; claim-next skips rows another claim holds (`SKIP LOCKED`) and checks the item again after
taking the lock, with a fresh snapshot, before it leases it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from flywheel.review.intake import NewItem

OPEN, CONFLICT, DONE = "open", "conflict", "done"


@dataclass
class Item:
    id: str
    review_id: str
    item_key: str
    queue: str
    kind: str
    request_id: str
    entity_id: str
    reason: int
    priority: int
    model_name: str
    model_version: int
    prompt_name: str
    prompt_version: int
    guard_verdict_id: str
    content: dict[str, Any]
    entity_keys: dict[str, str]
    event_time: datetime
    requested_at: datetime
    received_at: datetime
    labels_needed: int
    labels_done: int
    status: str
    final_decision_id: str | None
    completed_at: datetime | None
    # Filled by queries that join a lease: when the caller's lease on it ends.
    lease_expires_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Item:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})


@dataclass
class Decision:
    id: str
    item_id: str
    queue: str
    reviewer: str
    action: str
    category: str
    label: dict[str, Any]
    corrected_completion: str = ""
    comment: str = ""
    resolution: bool = False
    claimed_at: datetime | None = None
    decided_at: datetime | None = None
    undo_until: datetime | None = None
    undone_at: datetime | None = None
    event_ids: list[str] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Decision:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})


@dataclass
class User:
    id: str
    username: str
    role: str
    queues: list[str]
    created_at: datetime | None
    created_by: str
    disabled_at: datetime | None
    password_hash: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> User:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})


ITEM_COLUMNS = ("id, review_id, item_key, queue, kind, request_id, entity_id, reason, priority, model_name, "
                "model_version, prompt_name, prompt_version, guard_verdict_id, content, entity_keys, event_time, "
                "requested_at, received_at, labels_needed, labels_done, status, final_decision_id, completed_at")


def _items(prefix: str = "i") -> str:
    return ", ".join(f"{prefix}.{c.strip()}" for c in ITEM_COLUMNS.split(","))


# -- intake --------------------------------------------------------------------------------------------


async def add_items(conn: AsyncConnection, items: Sequence[NewItem]) -> int:
    """Insert the items (and their queues) that are new; an item whose review id or key (the same
    prediction) is there already is dropped. Returns how many were added."""
    if not items:
        return 0
    await conn.execute("INSERT INTO queues (name) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                       (sorted({i.queue for i in items}),))
    cur = await conn.execute(
        "INSERT INTO items (id, review_id, item_key, queue, kind, request_id, entity_id, reason, priority,"
        " model_name, model_version, prompt_name, prompt_version, guard_verdict_id, content, entity_keys,"
        " event_time, requested_at, labels_needed)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
        " %s::smallint[], %s::int[], %s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::text[], %s::jsonb[],"
        " %s::jsonb[], %s::timestamptz[], %s::timestamptz[], %s::smallint[])"
        " ON CONFLICT DO NOTHING",
        ([i.id for i in items], [i.review_id for i in items], [i.item_key for i in items], [i.queue for i in items],
         [i.kind for i in items], [i.request_id for i in items], [i.entity_id for i in items],
         [i.reason for i in items], [i.priority for i in items], [i.model_name for i in items],
         [i.model_version for i in items], [i.prompt_name for i in items], [i.prompt_version for i in items],
         [i.guard_verdict_id for i in items], [Jsonb(i.content) for i in items],
         [Jsonb(i.entity_keys) for i in items], [i.event_time for i in items], [i.requested_at for i in items],
         [i.labels_needed for i in items]))
    return cur.rowcount


# -- items and leases ------------------------------------------------------------------------------------


async def get_item(conn: AsyncConnection, item_id: str, *, lock: bool = False) -> Item | None:
    row = await (await conn.execute(
        f"SELECT {ITEM_COLUMNS} FROM items WHERE id = %s" + (" FOR UPDATE" if lock else ""), (item_id,))).fetchone()
    return Item.from_row(row) if row else None


async def current_lease(conn: AsyncConnection, reviewer: str, queue: str) -> Item | None:
    """The open item `reviewer` holds in `queue` now (its lease unexpired), oldest claim first."""
    row = await (await conn.execute(
        f"SELECT {_items()}, l.expires_at AS lease_expires_at FROM leases l JOIN items i ON i.id = l.item_id"
        " WHERE l.reviewer = %s AND l.queue = %s AND l.expires_at > now() AND i.status = 'open'"
        " ORDER BY l.claimed_at LIMIT 1", (reviewer, queue))).fetchone()
    return Item.from_row(row) if row else None


async def renew_held(conn: AsyncConnection, reviewer: str, queue: str, seconds: float) -> Item | None:
    """The open item `reviewer` holds in `queue` now (its lease unexpired), its lease renewed; None if none."""
    row = await (await conn.execute(
        f"WITH held AS (SELECT l.item_id FROM leases l JOIN items i ON i.id = l.item_id"
        f"  WHERE l.reviewer = %s AND l.queue = %s AND l.expires_at > now() AND i.status = 'open'"
        f"  ORDER BY l.claimed_at LIMIT 1),"
        f" renewed AS (UPDATE leases l SET expires_at = now() + make_interval(secs => %s) FROM held"
        f"  WHERE l.item_id = held.item_id AND l.reviewer = %s RETURNING l.item_id, l.expires_at)"
        f" SELECT {_items()}, r.expires_at AS lease_expires_at FROM renewed r JOIN items i ON i.id = r.item_id",
        (reviewer, queue, seconds, reviewer))).fetchone()
    return Item.from_row(row) if row else None


async def lock_next_candidate(conn: AsyncConnection, queue: str, reviewer: str, exclude: Sequence[str]) -> Item | None:
    """Lock the most urgent open item of `queue` that `reviewer` may take (not decided or skipped by them, a
    label still free: labels done plus unexpired leases below the labels needed); None when there is none."""
    row = await (await conn.execute(
        f"SELECT {_items()} FROM items i WHERE i.queue = %s AND i.status = 'open' AND i.labels_done < i.labels_needed"
        " AND i.id <> ALL(%s)"
        " AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.item_id = i.id AND d.reviewer = %s"
        "                 AND d.undone_at IS NULL AND NOT d.resolution)"
        " AND NOT EXISTS (SELECT 1 FROM skips s WHERE s.item_id = i.id AND s.reviewer = %s)"
        " AND i.labels_done + (SELECT count(*) FROM leases l WHERE l.item_id = i.id AND l.expires_at > now())"
        "     < i.labels_needed"
        " ORDER BY i.priority DESC, i.requested_at, i.id LIMIT 1 FOR UPDATE OF i SKIP LOCKED",
        (queue, list(exclude), reviewer, reviewer))).fetchone()
    return Item.from_row(row) if row else None


async def still_free(conn: AsyncConnection, item_id: str, reviewer: str) -> bool:
    """Whether `reviewer` may take the item, looked at again with a fresh snapshot (run it after locking the
    item: a claim that committed after the scan's snapshot is seen now)."""
    row = await (await conn.execute(
        "SELECT i.status = 'open' AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.item_id = i.id"
        "   AND d.reviewer = %s AND d.undone_at IS NULL AND NOT d.resolution)"
        " AND i.labels_done + (SELECT count(*) FROM leases l WHERE l.item_id = i.id AND l.reviewer <> %s"
        "   AND l.expires_at > now()) < i.labels_needed AS free FROM items i WHERE i.id = %s",
        (reviewer, reviewer, item_id))).fetchone()
    return bool(row and row["free"])


async def queue_exists(conn: AsyncConnection, queue: str) -> bool:
    return await (await conn.execute("SELECT 1 FROM queues WHERE name = %s", (queue,))).fetchone() is not None


async def others_holding(conn: AsyncConnection, item_id: str, reviewer: str) -> int:
    """Unexpired leases of other reviewers on the item (a fresh look: run it after locking the item)."""
    row = await (await conn.execute(
        "SELECT count(*) AS n FROM leases WHERE item_id = %s AND reviewer <> %s AND expires_at > now()",
        (item_id, reviewer))).fetchone()
    return int(row["n"]) if row else 0


async def decided_by(conn: AsyncConnection, item_id: str, reviewer: str) -> bool:
    row = await (await conn.execute(
        "SELECT 1 FROM decisions WHERE item_id = %s AND reviewer = %s AND undone_at IS NULL AND NOT resolution",
        (item_id, reviewer))).fetchone()
    return row is not None


async def lease(conn: AsyncConnection, item_id: str, reviewer: str, queue: str, seconds: float) -> datetime:
    """Give the item to `reviewer` for `seconds`. Expired leases of others stay (they no longer count) until
    the item leaves the queue, so a reviewer who comes back late learns that the lease expired."""
    row = await (await conn.execute(
        "INSERT INTO leases (item_id, reviewer, queue, expires_at)"
        " VALUES (%s, %s, %s, now() + make_interval(secs => %s))"
        " ON CONFLICT (item_id, reviewer) DO UPDATE SET claimed_at = now(), expires_at = EXCLUDED.expires_at"
        " RETURNING expires_at", (item_id, reviewer, queue, seconds))).fetchone()
    assert row is not None
    return row["expires_at"]


async def lease_of(conn: AsyncConnection, item_id: str, reviewer: str) -> dict[str, Any] | None:
    """The reviewer's lease on the item, expired or not: claimed_at, expires_at, active."""
    return await (await conn.execute(
        "SELECT claimed_at, expires_at, expires_at > now() AS active FROM leases WHERE item_id = %s AND reviewer = %s",
        (item_id, reviewer))).fetchone()


async def renew(conn: AsyncConnection, item_id: str, reviewer: str, seconds: float) -> datetime | None:
    """Extend an unexpired lease; None when the reviewer holds none on the item."""
    row = await (await conn.execute(
        "UPDATE leases SET expires_at = now() + make_interval(secs => %s)"
        " WHERE item_id = %s AND reviewer = %s AND expires_at > now() RETURNING expires_at",
        (seconds, item_id, reviewer))).fetchone()
    return row["expires_at"] if row else None


async def drop_lease(conn: AsyncConnection, item_id: str, reviewer: str) -> None:
    await conn.execute("DELETE FROM leases WHERE item_id = %s AND reviewer = %s", (item_id, reviewer))


async def drop_other_leases(conn: AsyncConnection, reviewer: str, queue: str, keep: str) -> None:
    """Release what `reviewer` holds in `queue` besides `keep` (undo gives back the undone item instead)."""
    await conn.execute("DELETE FROM leases WHERE reviewer = %s AND queue = %s AND item_id <> %s",
                       (reviewer, queue, keep))


async def add_skip(conn: AsyncConnection, item_id: str, reviewer: str, queue: str) -> None:
    await conn.execute("INSERT INTO skips (item_id, reviewer, queue) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                       (item_id, reviewer, queue))


async def settle(conn: AsyncConnection, item: Item, reviewer: str) -> None:
    """After `reviewer` decided: its lease goes (every lease, when the item left the queue), the item's state
    is stored."""
    await conn.execute(
        "WITH gone AS (DELETE FROM leases WHERE item_id = %s AND (reviewer = %s OR %s))"
        " UPDATE items SET labels_done = %s, status = %s, final_decision_id = %s, completed_at = %s WHERE id = %s",
        (item.id, reviewer, item.status != OPEN, item.labels_done, item.status, item.final_decision_id,
         item.completed_at, item.id))


async def set_item_state(conn: AsyncConnection, item: Item) -> None:
    await conn.execute(
        "UPDATE items SET labels_done = %s, status = %s, final_decision_id = %s, completed_at = %s WHERE id = %s",
        (item.labels_done, item.status, item.final_decision_id, item.completed_at, item.id))


# -- decisions -------------------------------------------------------------------------------------------


async def add_decision(conn: AsyncConnection, d: Decision, undo_seconds: float) -> Decision:
    """Store a decision (with the ids of its events when it is final); decided now, undoable for `undo_seconds`."""
    row = await (await conn.execute(
        "INSERT INTO decisions (id, item_id, queue, reviewer, action, category, label, corrected_completion, comment,"
        " resolution, claimed_at, event_ids, undo_until) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
        " now() + make_interval(secs => %s)) RETURNING *",
        (d.id, d.item_id, d.queue, d.reviewer, d.action, d.category, Jsonb(d.label), d.corrected_completion,
         d.comment, d.resolution, d.claimed_at, d.event_ids, undo_seconds))).fetchone()
    assert row is not None
    return Decision.from_row(row)


async def active_decisions(conn: AsyncConnection, item_id: str) -> list[Decision]:
    """The item's decisions that stand (not undone), oldest first."""
    rows = await (await conn.execute(
        "SELECT * FROM decisions WHERE item_id = %s AND undone_at IS NULL ORDER BY decided_at, id",
        (item_id,))).fetchall()
    return [Decision.from_row(r) for r in rows]


async def get_decision(conn: AsyncConnection, decision_id: str) -> Decision | None:
    row = await (await conn.execute("SELECT * FROM decisions WHERE id = %s", (decision_id,))).fetchone()
    return Decision.from_row(row) if row else None


async def undoable(conn: AsyncConnection, decision_id: str) -> bool:
    """Whether the decision stands and its undo window is still open (by the database's clock)."""
    row = await (await conn.execute(
        "SELECT undone_at IS NULL AND undo_until > now() AS ok FROM decisions WHERE id = %s",
        (decision_id,))).fetchone()
    return bool(row and row["ok"])


async def mark_undone(conn: AsyncConnection, decision_id: str) -> None:
    await conn.execute("UPDATE decisions SET undone_at = now() WHERE id = %s", (decision_id,))


async def last_undoable(conn: AsyncConnection, reviewer: str, queue: str | None = None) -> Decision | None:
    """The reviewer's latest decision (in `queue`, when given) that may still be undone."""
    row = await (await conn.execute(
        "SELECT * FROM decisions WHERE reviewer = %s AND (%s::text IS NULL OR queue = %s) AND undone_at IS NULL"
        " AND undo_until > now() ORDER BY decided_at DESC, id DESC LIMIT 1", (reviewer, queue, queue))).fetchone()
    return Decision.from_row(row) if row else None


async def conflicts(conn: AsyncConnection, queues: Sequence[str] | None, limit: int = 200) -> list[Item]:
    """Items whose two labels disagree, oldest first (in `queues`, when given)."""
    rows = await (await conn.execute(
        f"SELECT {ITEM_COLUMNS} FROM items WHERE status = 'conflict' AND (%s::text[] IS NULL OR queue = ANY(%s))"
        " ORDER BY requested_at, id LIMIT %s", (queues, queues, limit))).fetchall()
    return [Item.from_row(r) for r in rows]


# -- reports ---------------------------------------------------------------------------------------------


async def queue_stats(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Per queue: open items and labels still needed, items held now, conflicts, done, the age of the
    oldest open item, and when the last item arrived."""
    return await (await conn.execute(
        "SELECT q.name AS queue,"
        " count(i.id) FILTER (WHERE i.status = 'open') AS open,"
        " coalesce(sum(i.labels_needed - i.labels_done) FILTER (WHERE i.status = 'open'), 0) AS labels_needed,"
        " count(i.id) FILTER (WHERE i.status = 'conflict') AS conflicts,"
        " count(i.id) FILTER (WHERE i.status = 'done') AS done,"
        " count(i.id) FILTER (WHERE i.labels_needed = 2) AS double_labelled,"
        " extract(epoch FROM now() - min(i.requested_at) FILTER (WHERE i.status = 'open')) AS oldest_open_s,"
        " max(i.received_at) AS last_received_at,"
        " (SELECT count(*) FROM leases l WHERE l.queue = q.name AND l.expires_at > now()) AS in_progress,"
        " min(i.kind) AS kind"
        " FROM queues q LEFT JOIN items i ON i.queue = q.name GROUP BY q.name ORDER BY q.name")).fetchall()


async def reviewer_stats(conn: AsyncConnection, since: datetime) -> list[dict[str, Any]]:
    """Per reviewer and queue: decisions in total and since `since`, skips, decisions in the last hour, the
    median seconds from claim to decision, and the last decision's time."""
    return await (await conn.execute(
        "WITH d AS (SELECT reviewer, queue, decided_at, claimed_at FROM decisions WHERE undone_at IS NULL),"
        " s AS (SELECT reviewer, queue, count(*) AS skips FROM skips GROUP BY reviewer, queue)"
        " SELECT d.reviewer, d.queue, count(*) AS decisions,"
        " count(*) FILTER (WHERE d.decided_at >= %s) AS recent,"
        " count(*) FILTER (WHERE d.decided_at >= now() - interval '1 hour') AS last_hour,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM d.decided_at - d.claimed_at))"
        "   FILTER (WHERE d.claimed_at IS NOT NULL) AS median_seconds,"
        " max(d.decided_at) AS last_decided_at, coalesce(max(s.skips), 0) AS skips"
        " FROM d LEFT JOIN s ON s.reviewer = d.reviewer AND s.queue = d.queue"
        " GROUP BY d.reviewer, d.queue ORDER BY d.reviewer, d.queue", (since,))).fetchall()


async def double_ratings(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every standing independent decision of a double-labelled item, in decision order per item."""
    return await (await conn.execute(
        "SELECT d.item_id, d.queue, d.reviewer, d.category FROM decisions d JOIN items i ON i.id = d.item_id"
        " WHERE i.labels_needed = 2 AND d.undone_at IS NULL AND NOT d.resolution"
        " ORDER BY d.item_id, d.decided_at, d.id")).fetchall()


async def export_page(conn: AsyncConnection, *, queues: Sequence[str] | None, reviewer: str | None,
                      since: datetime | None, until: datetime | None, after: tuple[datetime, str] | None,
                      limit: int) -> list[dict[str, Any]]:
    """One page of standing decisions with their items, in (decided_at, id) order, after the cursor `after`."""
    where = ["d.undone_at IS NULL"]
    params: list[Any] = []
    if queues is not None:
        where.append("d.queue = ANY(%s)")
        params.append(list(queues))
    if reviewer:
        where.append("d.reviewer = %s")
        params.append(reviewer)
    if since is not None:
        where.append("d.decided_at >= %s")
        params.append(since)
    if until is not None:
        where.append("d.decided_at < %s")
        params.append(until)
    if after is not None:
        where.append("(d.decided_at, d.id) > (%s, %s)")
        params.extend(after)
    return await (await conn.execute(
        "SELECT d.id AS decision_id, d.item_id, d.queue, d.reviewer, d.action, d.category, d.label,"
        " d.corrected_completion, d.comment, d.resolution, d.claimed_at, d.decided_at,"
        " (i.final_decision_id = d.id) AS final, i.review_id, i.request_id, i.entity_id, i.kind, i.reason,"
        " i.model_name, i.model_version, i.prompt_name, i.prompt_version, i.entity_keys, i.event_time,"
        " i.requested_at, i.labels_needed, i.status AS item_status, i.content"
        f" FROM decisions d JOIN items i ON i.id = d.item_id WHERE {' AND '.join(where)}"
        " ORDER BY d.decided_at, d.id LIMIT %s", (*params, limit))).fetchall()


async def queue_names(conn: AsyncConnection) -> list[str]:
    return [r["name"] for r in await (await conn.execute("SELECT name FROM queues ORDER BY name")).fetchall()]


# -- users, sessions, secrets ----------------------------------------------------------------------------


async def add_user(conn: AsyncConnection, user: User) -> User | None:
    """The user added, or None when the name is taken."""
    row = await (await conn.execute(
        "INSERT INTO users (id, username, password_hash, role, queues, created_by) VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (username) DO NOTHING RETURNING *",
        (user.id, user.username, user.password_hash, user.role, user.queues, user.created_by))).fetchone()
    return User.from_row(row) if row else None


async def user_by_name(conn: AsyncConnection, username: str) -> User | None:
    row = await (await conn.execute("SELECT * FROM users WHERE username = %s", (username,))).fetchone()
    return User.from_row(row) if row else None


async def list_users(conn: AsyncConnection) -> list[User]:
    return [User.from_row(r) for r in await (await conn.execute(
        "SELECT * FROM users ORDER BY username")).fetchall()]


async def set_password(conn: AsyncConnection, user_id: str, password_hash: str) -> None:
    await conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (password_hash, user_id))


async def set_disabled(conn: AsyncConnection, username: str, disabled: bool) -> User | None:
    row = await (await conn.execute(
        "UPDATE users SET disabled_at = CASE WHEN %s THEN coalesce(disabled_at, now()) END WHERE username = %s"
        " RETURNING *", (disabled, username))).fetchone()
    if row is not None and disabled:
        await conn.execute("DELETE FROM sessions WHERE user_id = %s", (row["id"],))
    return User.from_row(row) if row else None


async def add_session(conn: AsyncConnection, session_id: str, user_id: str, csrf_token: str, hours: float) -> None:
    await conn.execute(
        "INSERT INTO sessions (id, user_id, csrf_token, expires_at) VALUES (%s, %s, %s, now() + make_interval("
        "secs => %s))", (session_id, user_id, csrf_token, hours * 3600))


async def session_user(conn: AsyncConnection, session_id: str) -> dict[str, Any] | None:
    """The live session's user (not disabled) and its CSRF token."""
    return await (await conn.execute(
        "SELECT u.*, s.csrf_token FROM sessions s JOIN users u ON u.id = s.user_id"
        " WHERE s.id = %s AND s.expires_at > now() AND u.disabled_at IS NULL", (session_id,))).fetchone()


async def drop_session(conn: AsyncConnection, session_id: str) -> None:
    await conn.execute("DELETE FROM sessions WHERE id = %s", (session_id,))


async def drop_expired_sessions(conn: AsyncConnection) -> int:
    return (await conn.execute("DELETE FROM sessions WHERE expires_at <= now()")).rowcount


async def secret(conn: AsyncConnection, name: str, generated: str) -> str:
    """The stored secret `name`, stored as `generated` if there is none yet (the first replica wins)."""
    await conn.execute("INSERT INTO secrets (name, value) VALUES (%s, %s) ON CONFLICT DO NOTHING", (name, generated))
    row = await (await conn.execute("SELECT value FROM secrets WHERE name = %s", (name,))).fetchone()
    assert row is not None
    return row["value"]
