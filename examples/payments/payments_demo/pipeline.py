"""The bank's data pipeline: what a user of Flywheel writes around the platform.

`feature_rows` is the streaming feature aggregation (one pass in time order, using only
what was observable at each moment), `label_events` turns chargebacks and settlements
into ground-truth feedback, and `feature_events` / `feedback_events` / `publish` put
both on the platform's topics (`features.updates`, `feedback.received`).

Point-in-time safety, by construction:
- `customer_stats` for a transaction at t is computed from the customer's transactions
  strictly before t and stamped t - 1 µs, so a point-in-time join at t finds exactly it,
  and the serving path (push the rows, then score) sees the same values online.
- `merchant_stats` at a day boundary T uses transactions before T and only the labels
  *observed* before T: a label that arrives later cannot leak into an earlier row.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from flywheel.common.clients.featurestore import feature_value
from flywheel.common.events import Event
from flywheel.common.topics import FEATURES_UPDATES, FEEDBACK_RECEIVED
from flywheel.proto.events.v1.common_pb2 import Label
from flywheel.proto.events.v1.features_pb2 import FeaturesUpdated
from flywheel.proto.events.v1.predictions_pb2 import FEEDBACK_SOURCE_GROUND_TRUTH, FeedbackReceived

if TYPE_CHECKING:
    from payments_demo.generator import Transaction

# The CloudEvents source of every event this project publishes.
SOURCE = "examples/payments"
# Event ids are derived from the rows' natural ids, so publishing the same data twice is a no-op downstream.
_EVENT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "flywheel:examples/payments")

DAY = timedelta(days=1)
WINDOW_24H = timedelta(hours=24)
WINDOW_30D = timedelta(days=30)
# customer_stats rows are stamped this much before their transaction (valid at, not after, it).
CUSTOMER_STATS_LEAD = timedelta(microseconds=1)

FeatureScalar = float | int | str


@dataclass(frozen=True)
class FeatureRow:
    """One row for one Feast push source (`<view>_push`)."""

    view: str
    entity_keys: dict[str, str]
    values: dict[str, FeatureScalar]
    event_time: datetime

    @property
    def push_source(self) -> str:
        return f"{self.view}_push"

    @property
    def entity_key(self) -> str:
        """The entity key value (each of the demo's views has a single join key)."""
        (value,) = self.entity_keys.values()
        return value

    @property
    def update_id(self) -> str:
        return f"{self.view}/{self.entity_key}/{self.event_time.isoformat()}"


class _MerchantWindow:
    """A merchant's recent transactions and the labels the bank has received for them."""

    def __init__(self) -> None:
        self.times: deque[datetime] = deque()
        self.labels: list[tuple[datetime, bool]] = []  # (transaction time, is fraud), in arrival order

    def row(self, merchant_id: str, at: datetime) -> FeatureRow:
        while self.times and self.times[0] < at - WINDOW_24H:
            self.times.popleft()
        self.labels = [(t, fraud) for t, fraud in self.labels if t >= at - WINDOW_30D]
        frauds = sum(fraud for _, fraud in self.labels)
        return FeatureRow("merchant_stats", {"merchant_id": merchant_id}, {
            "txn_count_24h": len(self.times),
            "fraud_rate_30d": frauds / len(self.labels) if self.labels else 0.0,
        }, at)


def _customer_aggregates(history: Sequence[tuple[datetime, float]], at: datetime) -> dict[str, FeatureScalar]:
    """Aggregates of a customer's (time, amount) history strictly before `at`.

    Windows are [at - 24 h, at) and [at - 30 d, at); the average is 0.0 without history.
    """
    day = [a for t, a in history if at - WINDOW_24H <= t < at]
    month = [a for t, a in history if at - WINDOW_30D <= t < at]
    return {
        "txn_count_24h": len(day),
        "amount_sum_24h": round(sum(day), 2),
        "avg_amount_30d": round(sum(month) / len(month), 2) if month else 0.0,
    }


def feature_rows(transactions: Iterable[Transaction]) -> Iterator[FeatureRow]:
    """The rows the pipeline pushes, in event-time order, computed in one streaming pass.

    Per transaction at t: its `customer_stats` row (history before t, stamped t - 1 µs) and its
    `transactions` row (stamped t). Per day boundary T (00:00 UTC, from the first transaction's
    day) and merchant: a `merchant_stats` row (stamped T) with the merchant's transactions of
    [T - 24 h, T) and its fraud rate over [T - 30 d, T) among labels observed before T.
    """
    txns = sorted(transactions, key=lambda t: t.event_time)
    if not txns:
        return
    merchant_ids = sorted({t.merchant_id for t in txns})
    label_feed = sorted(txns, key=lambda t: t.label_observed_at)  # the order the bank learns the truth in
    next_label = 0
    boundary = txns[0].event_time.replace(hour=0, minute=0, second=0, microsecond=0)
    customers: dict[str, deque[tuple[datetime, float]]] = defaultdict(deque)
    merchants: dict[str, _MerchantWindow] = defaultdict(_MerchantWindow)

    def day_boundaries(until: datetime, *, inclusive: bool) -> Iterator[FeatureRow]:
        nonlocal boundary, next_label
        while boundary < until or (inclusive and boundary == until):
            while next_label < len(label_feed) and label_feed[next_label].label_observed_at < boundary:
                known = label_feed[next_label]
                merchants[known.merchant_id].labels.append((known.event_time, known.is_fraud))
                next_label += 1
            for merchant_id in merchant_ids:
                yield merchants[merchant_id].row(merchant_id, boundary)
            boundary += DAY

    for txn in txns:
        t = txn.event_time
        yield from day_boundaries(t, inclusive=False)
        history = customers[txn.customer_id]
        while history and history[0][0] < t - WINDOW_30D:
            history.popleft()
        yield FeatureRow("customer_stats", {"customer_id": txn.customer_id}, _customer_aggregates(history, t),
                         t - CUSTOMER_STATS_LEAD)
        yield from day_boundaries(t, inclusive=True)  # a boundary exactly at t, after the row stamped t - 1 µs
        yield FeatureRow("transactions", {"transaction_id": txn.transaction_id}, {
            "customer_id": txn.customer_id,
            "merchant_id": txn.merchant_id,
            "amount": txn.amount,
            "hour_of_day": txn.hour_of_day,
            "is_foreign": int(txn.is_foreign),
            "card_present": int(txn.card_present),
            "merchant_category": txn.merchant_category,
        }, t)
        history.append((t, txn.amount))
        merchants[txn.merchant_id].times.append(t)


def label_events(transactions: Iterable[Transaction], *,
                 observed_before: datetime | None = None) -> list[FeedbackReceived]:
    """One ground-truth `FeedbackReceived` per transaction, in the order they are observed.

    `observed_before` keeps only the labels known by then (e.g. the end of the simulated period).
    """
    out = []
    for t in sorted(transactions, key=lambda t: (t.label_observed_at, t.transaction_id)):
        if observed_before is not None and t.label_observed_at >= observed_before:
            continue
        feedback = FeedbackReceived(
            feedback_id=f"fb-{t.transaction_id}", request_id=t.transaction_id, entity_id=t.transaction_id,
            source=FEEDBACK_SOURCE_GROUND_TRUTH, label=Label(flag=t.is_fraud),
            comment="chargeback" if t.is_fraud else "settled",
            entity_keys={"transaction_id": t.transaction_id, "customer_id": t.customer_id,
                         "merchant_id": t.merchant_id},
        )
        feedback.observed_at.FromDatetime(t.label_observed_at)
        feedback.event_time.FromDatetime(t.event_time)
        out.append(feedback)
    return out


def _event_id(natural_id: str) -> str:
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, natural_id))


def feature_events(rows: Iterable[FeatureRow]) -> Iterator[Event]:
    """`features.updates` events, keyed by the entity key value, with ids derived from the rows."""
    for row in rows:
        payload = FeaturesUpdated(update_id=row.update_id, push_source=row.push_source, entity_keys=row.entity_keys,
                                  values={k: feature_value(v) for k, v in row.values.items()})
        payload.event_time.FromDatetime(row.event_time)
        yield Event(topic=FEATURES_UPDATES, key=row.entity_key, payload=payload, source=SOURCE,
                    id=_event_id(row.update_id), time=row.event_time)


def feedback_events(feedback: Iterable[FeedbackReceived]) -> Iterator[Event]:
    """`feedback.received` events, keyed by request id (= transaction id), stamped when the label was observed."""
    for fb in feedback:
        yield Event(topic=FEEDBACK_RECEIVED, key=fb.request_id, payload=fb, source=SOURCE,
                    id=_event_id(fb.feedback_id), time=fb.observed_at.ToDatetime(tzinfo=UTC))


def all_events(transactions: Sequence[Transaction], *, labels_observed_before: datetime | None = None) -> list[Event]:
    """Feature and label events of `transactions`, merged in the order they happened in the world."""
    features = feature_events(feature_rows(transactions))
    labels = feedback_events(label_events(transactions, observed_before=labels_observed_before))
    return list(heapq.merge(features, labels, key=lambda e: e.time))


async def publish(events: Iterable[Event], bootstrap: str, *, batch_size: int = 500,
                  on_progress: Callable[[int], None] | None = None, client_id: str = "payments-demo") -> int:
    """Create the topics if needed, then send `events` in batches, waiting for the broker's acks.

    Returns how many events were published; `on_progress` gets the size of each acknowledged batch.
    """
    from flywheel.common.kafka import ensure_topics, new_producer, send_events  # Kafka only when publishing

    pending = list(events)
    await ensure_topics(bootstrap, {e.topic for e in pending})
    producer = new_producer(bootstrap, client_id=client_id)
    await producer.start()
    try:
        for i in range(0, len(pending), batch_size):
            batch = pending[i:i + batch_size]
            await send_events(producer, batch)
            if on_progress is not None:
                on_progress(len(batch))
    finally:
        await producer.stop()
    return len(pending)


# The bank's own stream of card payments, as its payment switch would publish them: what the
# platform scores (over inference's API) before anyone knows the truth. JSON, keyed by transaction
# id, on a topic of the bank's (not one of the platform's event topics), with no label in it.
TRANSACTIONS_TOPIC = "payments.transactions"


def transaction_record(t: Transaction) -> tuple[bytes, bytes]:
    """(key, JSON value) of a raw payment; the label and latent fraud pattern are not in it."""
    body = {"transaction_id": t.transaction_id, "customer_id": t.customer_id, "merchant_id": t.merchant_id,
            "event_time": t.event_time.isoformat(), "amount": t.amount, "hour_of_day": t.hour_of_day,
            "is_foreign": t.is_foreign, "card_present": t.card_present, "merchant_category": t.merchant_category,
            "country": t.country}
    return t.transaction_id.encode(), json.dumps(body).encode()


async def publish_transactions(transactions: Iterable[Transaction], bootstrap: str, *, partitions: int = 6,
                               client_id: str = "payments-demo") -> int:
    """Publish raw payments to `payments.transactions` (created if missing); returns how many."""
    from flywheel.common.kafka import ensure_topic_names, new_producer  # Kafka only when publishing

    records = [transaction_record(t) for t in transactions]
    await ensure_topic_names(bootstrap, {TRANSACTIONS_TOPIC: partitions})
    producer = new_producer(bootstrap, client_id=client_id)
    await producer.start()
    try:
        futures = [await producer.send(TRANSACTIONS_TOPIC, value=value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(records)
