"""From a reviews.requested event to a queue item: which queue, which prediction or answer (the key that
keeps it from entering twice), what the reviewer is shown, and whether two reviewers label it.

Pure logic: no database, no Kafka. A predictive request may hold a batch of rows (the payments demo
scores 20 payments per call); the monitor names the row in `context["row_index"]` and
`context["entity_id"]`, and the item shows that row of every tensor.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flywheel.common.errors import PoisonEvent
from flywheel.common.events import Event
from flywheel.proto.events.v1 import common_pb2, reviews_pb2

PREDICTIVE, ANSWER = "predictive", "answer"
# At most this many values of one tensor are kept for display (a reviewer reads rows, not matrices).
MAX_TENSOR_VALUES = 1000
REASONS = {value: name.removeprefix("REVIEW_REASON_").lower().replace("_", " ")
           for name, value in reviews_pb2.ReviewReason.items()}


@dataclass(frozen=True)
class NewItem:
    """An item to add to a queue (its id is fixed here, so a replayed event builds the same one)."""

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
    labels_needed: int = 1


def tensor_values(t: common_pb2.Tensor) -> list[Any]:
    """A tensor's contents as plain values, from the field its datatype uses (or whichever is filled)."""
    kind = t.datatype.upper()
    if kind == "BYTES" or (not kind and t.bytes_contents):
        return [v.decode("utf-8", "replace") for v in t.bytes_contents]
    if kind == "BOOL" or (not kind and t.bool_contents):
        return list(t.bool_contents)
    if kind.startswith(("INT", "UINT")) or (not kind and t.int_contents):
        return list(t.int_contents)
    return [v if math.isfinite(v) else None for v in t.fp_contents]


def _rows(tensors: list[common_pb2.Tensor]) -> int:
    """The batch size of a request: the first dimension of its first output (or input)."""
    for t in tensors:
        if t.shape:
            return int(t.shape[0])
    return 0


def _row_of(t: common_pb2.Tensor, row: int | None, rows: int) -> dict[str, Any]:
    values = tensor_values(t)
    shape = list(t.shape)
    if row is not None and rows > 1 and shape and shape[0] == rows and len(values) % rows == 0:
        width = len(values) // rows
        values = values[row * width:(row + 1) * width]
        shape = shape[1:] or [1]
    return {"name": t.name, "datatype": t.datatype, "shape": shape, "values": values[:MAX_TENSOR_VALUES],
            "truncated": len(values) > MAX_TENSOR_VALUES}


def _first(tensors: list[dict[str, Any]], name: str) -> Any:
    for t in tensors:
        if t["name"] == name and t["values"]:
            return t["values"][0]
    return None


def double_labelled(item_key: str, share: float) -> bool:
    """Whether two reviewers label this item: a hash of its key below `share` (a replay decides the same)."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    digest = hashlib.blake2b(b"review-double:" + item_key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def item_from_event(event: Event, double_label_share: float) -> NewItem:
    """The item a reviews.requested event asks for; PoisonEvent when it cannot be queued."""
    request = event.payload
    assert isinstance(request, reviews_pb2.ReviewRequested)
    queue = request.model.name.strip()
    if not queue:
        raise PoisonEvent("the review request names no model (ReviewRequested.model.name): no queue to put it in")
    if not request.request_id.strip():
        raise PoisonEvent("the review request names no request id (ReviewRequested.request_id): its label could "
                          "never be joined with the prediction")
    context = dict(request.context)
    review_id = request.review_id or event.id
    requested_at = request.requested_at.ToDatetime(UTC) if request.HasField("requested_at") else event.time
    event_time = request.event_time.ToDatetime(UTC) if request.HasField("event_time") else requested_at
    llm = request.llm
    answer = request.HasField("llm") and bool(llm.completion or llm.messages)
    entity_keys: dict[str, str] = {}
    row: int | None = None
    if "row_index" in context:
        try:
            row = int(context["row_index"])
        except ValueError:
            raise PoisonEvent(f"context row_index {context['row_index']!r} is not a row number") from None
        if row < 0:
            raise PoisonEvent(f"context row_index {row} is negative")
    if answer:
        content: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in llm.messages],
            "prompt": llm.prompt, "completion": llm.completion, "finish_reason": llm.finish_reason,
            "chunk_ids": list(llm.context_chunk_ids), "cache_hit": llm.cache_hit,
            "chunks": [{"chunk_id": c.chunk_id, "document_id": c.document_id, "title": c.title, "text": c.text,
                        "score": c.score} for c in request.chunks],
        }
    else:
        rows = _rows(list(request.outputs) or list(request.inputs))
        if row is not None and rows and row >= rows:
            raise PoisonEvent(f"context row_index {row} is outside the request's {rows} rows")
        inputs = [_row_of(t, row, rows) for t in request.inputs]
        outputs = [_row_of(t, row, rows) for t in request.outputs]
        # The entity keys inference logs next to the features: one BYTES value per row (transaction_id, ...).
        for t in request.inputs:
            if t.datatype.upper() == "BYTES" and len(t.shape) == 1 and (not rows or t.shape[0] == rows):
                values = tensor_values(t)
                index = row if row is not None else 0
                if index < len(values) and values[index]:
                    entity_keys[t.name] = values[index]
        predicted = _first(outputs, "label")
        score = _first(outputs, "probability")
        content = {"inputs": inputs, "outputs": outputs, "row_index": row, "rows": rows,
                   "prediction": {"label": None if predicted is None else bool(predicted),
                                  "score": score if isinstance(score, (int, float)) else None}}
    content["context"] = context
    entity_id = context.get("entity_id", "") or next(iter(entity_keys.values()), "")
    if entity_id:
        item_key = f"{request.request_id}/{entity_id}"
    elif row is not None:
        item_key = f"{request.request_id}#{row}"
    else:
        item_key = request.request_id
    return NewItem(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"flywheel-review/item/{review_id}")), review_id=review_id,
        item_key=item_key, queue=queue, kind=ANSWER if answer else PREDICTIVE, request_id=request.request_id,
        entity_id=entity_id, reason=int(request.reason), priority=int(request.priority), model_name=queue,
        model_version=int(request.model.version), prompt_name=request.prompt.name,
        prompt_version=int(request.prompt.version), guard_verdict_id=request.guard_verdict_id, content=content,
        entity_keys=entity_keys, event_time=event_time, requested_at=requested_at,
        labels_needed=2 if double_labelled(item_key, double_label_share) else 1)
