"""The ingest side's SQL: prediction rows (`observations`), windows and their version state, labels and
their join onto rows. Every statement runs in the caller's transaction (one per batch of events); the
read side for the API is `store.py`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection

if TYPE_CHECKING:
    from flywheel.monitor.ingest import Row

# (request id, model name, version, arm, row index): what identifies a stored prediction row.
RowKey = tuple[str, str, int, int, int]
VersionKey = tuple[str, int]


@dataclass(frozen=True)
class VersionState:
    """Where a version's window assignment stands: its open window (if any) and how many it has had."""

    open_window_id: str | None
    open_rows: int
    windows: int
    # Time mode: the bucket of the open window.
    bucket_start: datetime | None


@dataclass(frozen=True)
class WindowGrowth:
    """New rows of one window: how many, their time span and whether champion traffic is among them."""

    rows: int
    start: datetime
    end: datetime
    champion: bool


def _columns(keys: Sequence[VersionKey]) -> tuple[list[str], list[int]]:
    return [k[0] for k in keys], [k[1] for k in keys]


async def lock_versions(conn: AsyncConnection, versions: Sequence[VersionKey]) -> dict[VersionKey, VersionState]:
    """The state of each version (created when new), its row locked until commit: the lock that serializes
    window assignment. Locked in (model, version) order, so concurrent batches cannot deadlock."""
    await conn.execute(
        "INSERT INTO version_state (model_name, version) SELECT * FROM unnest(%s::text[], %s::bigint[]) "
        "ON CONFLICT DO NOTHING", _columns(versions))
    cur = await conn.execute(
        "SELECT s.model_name, s.version, s.open_window_id, s.windows, w.rows AS open_rows, w.bucket_start "
        "FROM version_state s LEFT JOIN windows w ON w.window_id = s.open_window_id "
        "WHERE (s.model_name, s.version) IN (SELECT * FROM unnest(%s::text[], %s::bigint[])) "
        "ORDER BY s.model_name, s.version FOR UPDATE OF s", _columns(versions))
    return {(r["model_name"], r["version"]): VersionState(r["open_window_id"], r["open_rows"] or 0, r["windows"],
                                                          r["bucket_start"]) for r in await cur.fetchall()}


async def stored_keys(conn: AsyncConnection, keys: Sequence[RowKey]) -> list[RowKey]:
    """Those of `keys` whose prediction row is stored already."""
    cur = await conn.execute(
        "SELECT o.request_id, o.model_name, o.version, o.arm, o.row_index FROM observations o "
        "JOIN unnest(%s::text[], %s::text[], %s::bigint[], %s::smallint[], %s::int[]) "
        "AS k(request_id, model_name, version, arm, row_index) USING (request_id, model_name, version, arm, "
        "row_index)", [list(c) for c in zip(*keys, strict=True)])
    return [(r["request_id"], r["model_name"], r["version"], r["arm"], r["row_index"]) for r in await cur.fetchall()]


async def insert_window(conn: AsyncConnection, window_id: str, version: VersionKey, sequence: int,
                        bucket: datetime | None = None) -> None:
    await conn.execute(
        "INSERT INTO windows (window_id, model_name, version, sequence, bucket_start) VALUES (%s, %s, %s, %s, %s)",
        (window_id, version[0], version[1], sequence, bucket))


async def close_windows(conn: AsyncConnection, window_ids: Sequence[str], now: datetime) -> None:
    """Open windows -> pending (the analyzer's queue)."""
    await conn.execute("UPDATE windows SET state = 'pending', closed_at = %s "
                       "WHERE window_id = ANY(%s) AND state = 'open'", (now, list(window_ids)))


async def set_open_window(conn: AsyncConnection, version: VersionKey, window_id: str | None, windows: int) -> None:
    await conn.execute(
        "UPDATE version_state SET open_window_id = %s, windows = %s WHERE model_name = %s AND version = %s",
        (window_id, windows, version[0], version[1]))


async def insert_observations(conn: AsyncConnection, rows: Sequence[Row], window_of: Mapping[RowKey, str]) -> None:
    """Store prediction rows, each in its window (one statement; a row stored already is skipped)."""
    await conn.execute(
        "INSERT INTO observations (request_id, model_name, version, arm, row_index, entity_id, ts, window_id, "
        "probability, predicted, numeric, categorical) SELECT * FROM unnest(%s::text[], %s::text[], "
        "%s::bigint[], %s::smallint[], %s::int[], %s::text[], %s::timestamptz[], %s::text[], %s::float8[], "
        "%s::bool[], %s::bytea[], %s::text[]) ON CONFLICT DO NOTHING",
        ([r.request_id for r in rows], [r.model_name for r in rows], [r.version for r in rows],
         [r.arm for r in rows], [r.row_index for r in rows], [r.entity_id for r in rows], [r.ts for r in rows],
         [window_of[r.key] for r in rows], [r.probability for r in rows], [r.predicted for r in rows],
         [r.numeric for r in rows], [r.categorical for r in rows]))


async def grow_windows(conn: AsyncConnection, growth: Mapping[str, WindowGrowth]) -> None:
    """Advance each window's row count and time span, and note champion traffic."""
    ids = list(growth)
    await conn.execute(
        "UPDATE windows w SET rows = w.rows + a.n, start_ts = LEAST(w.start_ts, a.s), "
        "end_ts = GREATEST(w.end_ts, a.e), champion = w.champion OR a.c "
        "FROM unnest(%s::text[], %s::bigint[], %s::timestamptz[], %s::timestamptz[], %s::bool[]) "
        "AS a(id, n, s, e, c) WHERE w.window_id = a.id",
        (ids, [growth[i].rows for i in ids], [growth[i].start for i in ids], [growth[i].end for i in ids],
         [growth[i].champion for i in ids]))


async def mark_champion_seen(conn: AsyncConnection, versions: Sequence[VersionKey], now: datetime) -> None:
    await conn.execute(
        "UPDATE version_state SET champion_seen_at = %s WHERE (model_name, version) IN "
        "(SELECT * FROM unnest(%s::text[], %s::bigint[]))", (now, *_columns(versions)))


async def lock_review_counts(conn: AsyncConnection, window_ids: Sequence[str]) -> dict[str, int]:
    """How many reviews each window has asked for, its row locked until commit."""
    cur = await conn.execute("SELECT window_id, reviews FROM windows WHERE window_id = ANY(%s) FOR UPDATE",
                             (list(window_ids),))
    return {r["window_id"]: r["reviews"] for r in await cur.fetchall()}


async def add_reviews(conn: AsyncConnection, window_id: str, count: int) -> None:
    await conn.execute("UPDATE windows SET reviews = reviews + %s WHERE window_id = %s", (count, window_id))


async def insert_labels(conn: AsyncConnection, labels: Mapping[tuple[str, str], tuple[bool, int]],
                        received_at: datetime) -> None:
    """Store labels, (request id, entity id) -> (label, feedback source); the first one of a row stays."""
    items = list(labels.items())
    await conn.execute(
        "INSERT INTO labels (request_id, entity_id, label, source, received_at) "
        "SELECT r, e, l, s, %s FROM unnest(%s::text[], %s::text[], %s::bool[], %s::smallint[]) AS x(r, e, l, s) "
        "ON CONFLICT DO NOTHING",
        (received_at, [k[0] for k, _ in items], [k[1] for k, _ in items], [v[0] for _, v in items],
         [v[1] for _, v in items]))


async def contradicted_row(conn: AsyncConnection, request_id: str, entity_id: str, label: bool,
                           ) -> dict[str, Any] | None:
    """The first stored row of a request (of that entity, when given) whose prediction the label contradicts."""
    cur = await conn.execute(
        "SELECT model_name, version, row_index, entity_id, predicted, probability FROM observations "
        "WHERE request_id = %s AND (%s = '' OR entity_id = %s) AND predicted IS NOT NULL AND predicted <> %s "
        "ORDER BY arm, row_index LIMIT 1", (request_id, entity_id, entity_id, label))
    return await cur.fetchone()


async def join_labels(conn: AsyncConnection, request_ids: Sequence[str]) -> list[tuple[str, int]]:
    """Put stored labels on unlabelled rows of these requests; analyzed windows that gained labels are
    marked for re-analysis (their performance changes). Returns (model, rows labelled) per window."""
    cur = await conn.execute(
        "WITH j AS (UPDATE observations o SET label = l.label, labelled_at = now() FROM labels l "
        " WHERE o.request_id = ANY(%s) AND o.label IS NULL AND l.request_id = o.request_id "
        " AND (l.entity_id = '' OR l.entity_id = o.entity_id) RETURNING o.window_id, o.model_name), "
        "c AS (SELECT window_id, min(model_name) AS model_name, count(*) AS n FROM j GROUP BY window_id), "
        "u AS (UPDATE windows w SET labelled_rows = w.labelled_rows + c.n, "
        " reanalyze = w.reanalyze OR w.state IN ('analyzed', 'failed') FROM c WHERE w.window_id = c.window_id) "
        "SELECT model_name, n FROM c", (list(request_ids),))
    return [(r["model_name"], r["n"]) for r in await cur.fetchall()]


async def lock_open_time_windows(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Open windows of time mode (window_id, bucket_start, model_name), skipping those another
    transaction holds; locked until commit."""
    cur = await conn.execute(
        "SELECT w.window_id, w.bucket_start, w.model_name FROM windows w WHERE w.state = 'open' "
        "AND w.bucket_start IS NOT NULL FOR UPDATE SKIP LOCKED")
    return list(await cur.fetchall())


async def forget_open_windows(conn: AsyncConnection, window_ids: Sequence[str]) -> None:
    """The versions whose open window is one of these have none open any more."""
    await conn.execute("UPDATE version_state SET open_window_id = NULL WHERE open_window_id = ANY(%s)",
                       (list(window_ids),))
