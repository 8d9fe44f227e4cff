"""Ground truth arriving late: each payment's label waits until the bank learns it (chargeback or
settlement), then goes to `feedback.received` with the request id of the prediction it judges."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from payments_demo.generator import Transaction
from payments_demo.pipeline import feedback_events
from payments_demo.timeline import TimeMap


@dataclass(order=True)
class PendingLabel:
    """A label the bank will learn at `observed_sim`, for a payment stamped `event_wall`."""

    observed_sim: datetime
    seq: int
    txn: Transaction = field(compare=False)
    event_wall: datetime = field(compare=False)
    request_id: str = field(compare=False)


class LabelSchedule:
    """Labels waiting for their (simulated) observation time; `due` hands them out in that order.

    Kept in simulated time, so a re-anchored time map (the clock paused for the bootstrap) still
    delivers each label the same simulated delay after its payment.
    """

    def __init__(self) -> None:
        self._heap: list[PendingLabel] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, txn: Transaction, *, event_wall: datetime, request_id: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, PendingLabel(txn.label_observed_at, self._seq, txn, event_wall, request_id))

    def due(self, sim_now: datetime) -> list[PendingLabel]:
        out = []
        while self._heap and self._heap[0].observed_sim <= sim_now:
            out.append(heapq.heappop(self._heap))
        return out


def label_event(pending: PendingLabel, time_map: TimeMap) -> Any:
    """The `feedback.received` event of a due label: the prediction's request id, the payment as entity,
    its event time as stamped on its features, and the (mapped) time the bank learned the truth."""
    from flywheel.proto.events.v1.common_pb2 import Label
    from flywheel.proto.events.v1.predictions_pb2 import FEEDBACK_SOURCE_GROUND_TRUTH, FeedbackReceived

    t = pending.txn
    fb = FeedbackReceived(
        feedback_id=f"fb-{t.transaction_id}", request_id=pending.request_id, entity_id=t.transaction_id,
        source=FEEDBACK_SOURCE_GROUND_TRUTH, label=Label(flag=t.is_fraud),
        comment="chargeback" if t.is_fraud else "settled",
        entity_keys={"transaction_id": t.transaction_id, "customer_id": t.customer_id, "merchant_id": t.merchant_id})
    fb.event_time.FromDatetime(pending.event_wall)
    fb.observed_at.FromDatetime(max(time_map.to_wall(pending.observed_sim), pending.event_wall))
    (event,) = feedback_events([fb])
    return event
