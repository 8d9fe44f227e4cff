"""The ingest side: prediction rows into windows and labels onto rows, one database transaction
per batch of events (the record is PostgreSQL, not the broker; the SQL is in `ingest_store.py`).

Replays are harmless: a prediction row is keyed by (request id, model, version, arm, row index)
and rows already stored are dropped before anything is counted; feedback events are recorded in
`processed_events` in the same transaction as their effect.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from psycopg import AsyncConnection

from flywheel.common.errors import PoisonEvent
from flywheel.common.events import Event
from flywheel.common.kafka import record_processed
from flywheel.common.outbox import enqueue
from flywheel.common.topics import FEEDBACK_RECEIVED, REVIEWS_REQUESTED
from flywheel.monitor import ingest_store as store
from flywheel.monitor import metrics
from flywheel.monitor.config import MonitorSettings
from flywheel.monitor.ingest_store import RowKey, VersionKey, VersionState, WindowGrowth
from flywheel.monitor.windows import assign_by_count, bucket_closed, bucket_start
from flywheel.proto.events.v1 import common_pb2, predictions_pb2, reviews_pb2

SOURCE = "flywheel-monitor"
SEP = "\x1f"
CHAMPION = predictions_pb2.PREDICTION_ARM_CHAMPION
DISPUTING = (predictions_pb2.FEEDBACK_SOURCE_END_USER, predictions_pb2.FEEDBACK_SOURCE_REVIEWER)


@dataclass
class Row:
    request_id: str
    model_name: str
    version: int
    arm: int
    row_index: int
    entity_id: str
    ts: datetime
    probability: float | None
    predicted: bool | None
    numeric: bytes | None
    categorical: str | None

    @property
    def key(self) -> RowKey:
        return (self.request_id, self.model_name, self.version, self.arm, self.row_index)


@dataclass
class IngestResult:
    rows: int = 0
    duplicates: int = 0
    windows_closed: int = 0
    reviews: int = 0
    labels_joined: int = 0
    per_window: dict[str, int] = field(default_factory=dict)


def _tensor(message: predictions_pb2.PredictionLogged, name: str, outputs: bool) -> common_pb2.Tensor | None:
    for t in (message.outputs if outputs else message.inputs):
        if t.name == name:
            return t
    return None


def rows_of(message: predictions_pb2.PredictionLogged, event_time: datetime) -> list[Row]:
    """The rows of one PredictionLogged; [] for non-tabular models (no `probability` output)."""
    prob = _tensor(message, "probability", True)
    if prob is None or not message.model.name:
        return []
    p = np.asarray(prob.fp_contents, dtype=np.float64)
    n = len(p)
    label = _tensor(message, "label", True)
    predicted = list(label.bool_contents) if label is not None and len(label.bool_contents) == n else None
    numeric = _tensor(message, "numeric", False)
    num_rows: list[bytes] | None = None
    if numeric is not None:
        values = np.asarray(numeric.fp_contents, dtype="<f4")
        if n == 0 or values.size % n:
            raise PoisonEvent(f"numeric tensor has {values.size} values, not a multiple of {n} rows")
        matrix = values.reshape(n, values.size // n)
        num_rows = [matrix[i].tobytes() for i in range(n)]
    categorical = _tensor(message, "categorical", False)
    cat_rows: list[str] | None = None
    if categorical is not None:
        values_b = list(categorical.bytes_contents)
        if n == 0 or len(values_b) % n:
            raise PoisonEvent(f"categorical tensor has {len(values_b)} values, not a multiple of {n} rows")
        width = len(values_b) // n
        texts = [v.decode("utf-8", "replace") for v in values_b]
        cat_rows = [SEP.join(texts[i * width:(i + 1) * width]) for i in range(n)]
    entities = list(message.entity_ids)
    ts = message.timestamp.ToDatetime(tzinfo=UTC) if message.HasField("timestamp") else event_time
    return [Row(message.request_id, message.model.name, message.model.version, int(message.arm), i,
                entities[i] if i < len(entities) else "", ts, float(p[i]),
                bool(predicted[i]) if predicted is not None else None,
                num_rows[i] if num_rows is not None else None, cat_rows[i] if cat_rows is not None else None)
            for i in range(n)]


def sampled(request_id: str, rate: float) -> bool:
    """Deterministic sampling by request id hash (a replay samples the same rows)."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(b"monitor-review:" + request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def window_growth(rows: Iterable[Row], window_of: dict[RowKey, str]) -> dict[str, WindowGrowth]:
    """Per window: how many of the rows went to it, their time span, and whether champion traffic is among them."""
    growth: dict[str, WindowGrowth] = {}
    for r in rows:
        w = window_of[r.key]
        g = growth.get(w)
        growth[w] = WindowGrowth(1, r.ts, r.ts, r.arm == CHAMPION) if g is None else WindowGrowth(
            g.rows + 1, min(g.start, r.ts), max(g.end, r.ts), g.champion or r.arm == CHAMPION)
    return growth


class Ingest:
    """Applies batches of decoded events inside the caller's transaction."""

    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings

    async def predictions(self, conn: AsyncConnection, events: list[Event], now: datetime | None = None,
                          ) -> IngestResult:
        now = now or datetime.now(UTC)
        result = IngestResult()
        rows: dict[RowKey, Row] = {}
        messages: dict[str, predictions_pb2.PredictionLogged] = {}
        for event in events:
            message = event.payload
            assert isinstance(message, predictions_pb2.PredictionLogged)
            for row in rows_of(message, event.time):
                if row.key not in rows:
                    rows[row.key] = row
                    messages[row.request_id] = message
        if not rows:
            return result
        # The version rows are the lock that serializes window assignment.
        state = await store.lock_versions(conn, sorted({(r.model_name, r.version) for r in rows.values()}))
        keys = list(rows)
        for dup in await store.stored_keys(conn, keys):
            rows.pop(dup, None)
        result.duplicates = len(keys) - len(rows)
        if result.duplicates:
            metrics.DUPLICATE_ROWS.labels(keys[0][1]).inc(result.duplicates)
        if not rows:
            return result
        by_version: dict[VersionKey, list[Row]] = defaultdict(list)
        for row in rows.values():
            by_version[(row.model_name, row.version)].append(row)
        window_of: dict[RowKey, str] = {}
        for version_key, version_rows in by_version.items():
            if self.settings.window_mode == "count":
                await self._assign_count(conn, version_key, state[version_key], version_rows, window_of, result, now)
            else:
                await self._assign_time(conn, version_key, state[version_key], version_rows, window_of, result, now)
        new = list(rows.values())
        await store.insert_observations(conn, new, window_of)
        growth = window_growth(new, window_of)
        await store.grow_windows(conn, growth)
        champions = sorted({(r.model_name, r.version) for r in new if r.arm == CHAMPION})
        if champions:
            await store.mark_champion_seen(conn, champions, now)
        result.labels_joined = await join_labels(conn, sorted({r.request_id for r in new}))
        result.reviews = await self._low_confidence_reviews(conn, new, window_of, messages, now)
        result.rows = len(new)
        result.per_window = {i: g.rows for i, g in growth.items()}
        for (model, _), version_rows in by_version.items():
            metrics.ROWS_INGESTED.labels(model).inc(len(version_rows))
        return result

    async def _new_window(self, conn: AsyncConnection, key: VersionKey, sequence: int,
                          bucket: datetime | None = None) -> str:
        window_id = str(uuid.uuid4())
        await store.insert_window(conn, window_id, key, sequence, bucket)
        return window_id

    async def _close(self, conn: AsyncConnection, window_ids: list[str], now: datetime, result: IngestResult,
                     model: str) -> None:
        if window_ids:
            await store.close_windows(conn, window_ids, now)
            result.windows_closed += len(window_ids)
            metrics.WINDOWS_CLOSED.labels(model).inc(len(window_ids))

    async def _assign_count(self, conn: AsyncConnection, key: VersionKey, st: VersionState, rows: list[Row],
                            window_of: dict[RowKey, str], result: IngestResult, now: datetime) -> None:
        size = self.settings.window_size
        open_id, open_rows, sequence = st.open_window_id, st.open_rows, st.windows
        if open_id is None:
            sequence += 1
            open_id, open_rows = await self._new_window(conn, key, sequence), 0
        slots = assign_by_count(open_rows, len(rows), size)
        ids = [open_id]
        fill = {0: open_rows}
        position = 0
        for slot in slots:
            while slot.offset >= len(ids):
                sequence += 1
                ids.append(await self._new_window(conn, key, sequence))
            for row in rows[position:position + slot.count]:
                window_of[row.key] = ids[slot.offset]
            position += slot.count
            fill[slot.offset] = fill.get(slot.offset, 0) + slot.count
        full = [ids[o] for o in sorted(fill) if fill[o] >= size]
        await self._close(conn, full, now, result, key[0])
        last = ids[-1]
        await store.set_open_window(conn, key, None if last in full else last, sequence)

    async def _assign_time(self, conn: AsyncConnection, key: VersionKey, st: VersionState, rows: list[Row],
                           window_of: dict[RowKey, str], result: IngestResult, now: datetime) -> None:
        """Time mode: a row goes to the window of its bucket while that is open; a late row (its
        bucket closed already) goes to the open window, so an analyzed window never changes."""
        seconds = self.settings.window_seconds
        open_id, open_bucket, sequence = st.open_window_id, st.bucket_start, st.windows
        for row in sorted(rows, key=lambda r: r.ts):
            bucket = bucket_start(row.ts, seconds)
            if open_id is not None and (open_bucket is None or bucket <= open_bucket):
                window_of[row.key] = open_id
                continue
            if open_id is not None:
                await self._close(conn, [open_id], now, result, key[0])
            sequence += 1
            open_id, open_bucket = await self._new_window(conn, key, sequence, bucket), bucket
            window_of[row.key] = open_id
        await store.set_open_window(conn, key, open_id, sequence)

    async def _low_confidence_reviews(self, conn: AsyncConnection, rows: list[Row], window_of: dict[RowKey, str],
                                      messages: dict[str, predictions_pb2.PredictionLogged], now: datetime) -> int:
        candidates: dict[str, list[Row]] = defaultdict(list)
        for r in rows:
            policy = self.settings.review_policy_for(r.model_name)
            # The threshold is the version's; 0.5 stands in at ingest (calibrated probabilities).
            if r.probability is not None and abs(r.probability - 0.5) <= policy.band and \
                    policy.max_per_window > 0 and sampled(f"{r.request_id}/{r.row_index}", policy.rate):
                candidates[window_of[r.key]].append(r)
        if not candidates:
            return 0
        used = await store.lock_review_counts(conn, list(candidates))
        emitted = 0
        for window_id, picked in candidates.items():
            room = self.settings.review_policy_for(picked[0].model_name).max_per_window - used.get(window_id, 0)
            picked = picked[:max(room, 0)]
            for r in picked:
                message = messages[r.request_id]
                review = reviews_pb2.ReviewRequested(
                    review_id=str(uuid.uuid5(uuid.NAMESPACE_URL,
                                             f"monitor/low-confidence/{'/'.join(map(str, r.key))}")),
                    request_id=r.request_id, model=common_pb2.ModelRef(name=r.model_name, version=r.version),
                    reason=reviews_pb2.REVIEW_REASON_LOW_CONFIDENCE, priority=1,
                    inputs=message.inputs, outputs=message.outputs,
                    context={"row_index": str(r.row_index), "entity_id": r.entity_id, "window_id": window_id,
                             "probability": f"{r.probability:.6f}"})
                review.requested_at.FromDatetime(now)
                review.event_time.FromDatetime(r.ts)  # a reviewer's label is valid as of the prediction
                await enqueue(conn, Event(REVIEWS_REQUESTED, r.request_id, review, SOURCE, id=review.review_id))
                metrics.REVIEWS.labels(r.model_name, "low_confidence").inc()
            if picked:
                await store.add_reviews(conn, window_id, len(picked))
                emitted += len(picked)
        return emitted

    async def feedback(self, conn: AsyncConnection, events: list[Event], group: str, now: datetime | None = None,
                       ) -> int:
        """Store labels, join them to stored rows, request reviews of disputed predictions."""
        now = now or datetime.now(UTC)
        fresh = await record_processed(conn, group, FEEDBACK_RECEIVED.name, [e.id for e in events])
        labels: dict[tuple[str, str], tuple[bool, int]] = {}
        disputes: list[tuple[Event, bool]] = []
        for event in events:
            if event.id not in fresh:
                continue
            fb = event.payload
            assert isinstance(fb, predictions_pb2.FeedbackReceived)
            value = label_value(fb.label, self.settings.positive_label_texts, self.settings.negative_label_texts)
            if value is None or not fb.request_id:
                continue
            labels.setdefault((fb.request_id, fb.entity_id), (value, int(fb.source)))
            if fb.source in DISPUTING:
                disputes.append((event, value))
        if not labels:
            return 0
        await store.insert_labels(conn, labels, now)
        joined = await join_labels(conn, sorted({k[0] for k in labels}))
        for event, value in disputes:
            await self._dispute(conn, event, value, now)
        return joined

    async def _dispute(self, conn: AsyncConnection, event: Event, value: bool, now: datetime) -> None:
        fb = event.payload
        assert isinstance(fb, predictions_pb2.FeedbackReceived)
        row = await store.contradicted_row(conn, fb.request_id, fb.entity_id, value)
        if row is None:
            return
        review = reviews_pb2.ReviewRequested(
            review_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"monitor/disputed/{event.id}")),
            request_id=fb.request_id, model=common_pb2.ModelRef(name=row["model_name"], version=row["version"]),
            reason=reviews_pb2.REVIEW_REASON_DISPUTED, priority=2,
            context={"feedback_id": fb.feedback_id, "entity_id": row["entity_id"], "predicted": str(row["predicted"]),
                     "feedback_label": str(value), "probability": f"{row['probability']:.6f}",
                     "comment": fb.comment, "source": predictions_pb2.FeedbackSource.Name(fb.source)})
        review.requested_at.FromDatetime(now)
        if fb.HasField("event_time"):
            review.event_time.CopyFrom(fb.event_time)
        await enqueue(conn, Event(REVIEWS_REQUESTED, fb.request_id, review, SOURCE, id=review.review_id))
        metrics.REVIEWS.labels(row["model_name"], "disputed").inc()


def label_value(label: common_pb2.Label, positive_texts: Iterable[str] = ("true", "1", "yes", "positive"),
                negative_texts: Iterable[str] = ("false", "0", "no", "negative")) -> bool | None:
    """A feedback label as the binary outcome the monitor measures: a flag as is, a number >= 0.5 as
    positive, a text by the configured words (case-insensitive); None when it says neither."""
    kind = label.WhichOneof("value")
    if kind == "flag":
        return label.flag
    if kind == "number":
        return label.number >= 0.5
    if kind == "text":
        text = label.text.strip().lower()
        if text in {t.lower() for t in positive_texts}:
            return True
        if text in {t.lower() for t in negative_texts}:
            return False
    return None


async def join_labels(conn: AsyncConnection, request_ids: list[str]) -> int:
    """Put stored labels on unlabelled rows of these requests (windows that gained labels after their
    analysis are analyzed again); returns how many rows got one."""
    total = 0
    for model, count in await store.join_labels(conn, request_ids):
        metrics.LABELS_JOINED.labels(model).inc(count)
        total += count
    return total


async def close_overdue_time_windows(conn: AsyncConnection, settings: MonitorSettings, now: datetime) -> int:
    """Time mode: close open windows whose bucket ended more than the grace period ago."""
    if settings.window_mode != "time":
        return 0
    closing = [r for r in await store.lock_open_time_windows(conn)
               if bucket_closed(r["bucket_start"], now, settings.window_seconds, settings.window_grace_seconds)]
    if not closing:
        return 0
    ids = [r["window_id"] for r in closing]
    await store.close_windows(conn, ids, now)
    await store.forget_open_windows(conn, ids)
    for r in closing:
        metrics.WINDOWS_CLOSED.labels(r["model_name"]).inc()
    return len(ids)
