"""Starting the review app in a test and feeding it: settings on the session's stack, review requests as the
monitor (a row of a batched prediction) and the generation path (an answer with its chunks) send them, tokens
for reviewers and leads, and an HTTP client of its JSON API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from flywheel.common.auth import TokenStore
from flywheel.common.db import Database
from flywheel.common.events import Event
from flywheel.common.topics import REVIEWS_REQUESTED
from flywheel.proto.events.v1 import common_pb2, predictions_pb2, reviews_pb2
from flywheel.review.config import ReviewSettings
from tests.service_helpers import shared_settings

FEATURES = ["amount", "hour_of_day", "is_foreign"]


def review_settings(infra: Any, **overrides: Any) -> ReviewSettings:
    """The app on the session's stack: its own schema and consumer group, a free port, no registry."""
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = dict(
        **{k: v for k, v in shared_settings(infra).items() if k != "grpc_port"}, http_port=0,
        db_schema=f"review_{suffix}", consumer_group=f"review-{suffix}", registry_addr="", undo_seconds=2.0,
        double_label_share=0.0, label_names={"*": ["legit", "fraud"]})
    values.update(overrides)
    return ReviewSettings(**values)


def predictive_request(model: str, request_id: str, *, rows: int = 3, row: int = 1, version: int = 3,
                       probability: float = 0.52, review_id: str | None = None, event_id: str | None = None,
                       reason: int = reviews_pb2.REVIEW_REASON_LOW_CONFIDENCE,
                       event_time: datetime | None = None) -> Event:
    """A low-confidence sample of row `row` of a batched prediction, as the monitor sends it (the whole
    request's tensors as inference logged them, the row named in the context)."""
    ids = [f"{request_id}-t{i}" for i in range(rows)]
    probabilities = [0.1] * rows
    probabilities[row] = probability
    request = reviews_pb2.ReviewRequested(
        review_id=review_id or str(uuid.uuid4()), request_id=request_id,
        model=common_pb2.ModelRef(name=model, version=version), reason=reason, priority=1,  # type: ignore[arg-type]
        inputs=[
            common_pb2.Tensor(name="numeric", datatype="FP32", shape=[rows, 3],
                              fp_contents=[v for i in range(rows) for v in (100.0 * (i + 1), 13.0 + i, i % 2)]),
            common_pb2.Tensor(name="categorical", datatype="BYTES", shape=[rows, 1],
                              bytes_contents=[f"cat{i}".encode() for i in range(rows)]),
            common_pb2.Tensor(name="transaction_id", datatype="BYTES", shape=[rows],
                              bytes_contents=[t.encode() for t in ids]),
            common_pb2.Tensor(name="customer_id", datatype="BYTES", shape=[rows],
                              bytes_contents=[f"c-{i}".encode() for i in range(rows)]),
        ],
        outputs=[common_pb2.Tensor(name="probability", datatype="FP32", shape=[rows], fp_contents=probabilities),
                 common_pb2.Tensor(name="label", datatype="INT64", shape=[rows],
                                   int_contents=[int(p >= 0.5) for p in probabilities])],
        context={"row_index": str(row), "entity_id": ids[row], "window_id": "w-1",
                 "probability": f"{probability:.6f}"})
    request.requested_at.FromDatetime(datetime.now(UTC))
    request.event_time.FromDatetime(event_time or datetime.now(UTC) - timedelta(minutes=5))
    return Event(REVIEWS_REQUESTED, request_id, request, "tests", **({"id": event_id} if event_id else {}))


def answer_request(app_name: str, request_id: str, *, completion: str = "You can dispute a card payment within "
                   "120 days.", question: str = "How long do I have to dispute a payment?") -> Event:
    """A generation with negative user feedback, as the generation path would send it: the exchange, the
    prompt version, the retrieved chunks."""
    request = reviews_pb2.ReviewRequested(
        review_id=str(uuid.uuid4()), request_id=request_id, model=common_pb2.ModelRef(name=app_name, version=2),
        reason=reviews_pb2.REVIEW_REASON_DISPUTED, priority=2,
        llm=predictions_pb2.LlmExchange(
            messages=[predictions_pb2.ChatMessage(role="system", content="Answer from the bank's policies."),
                      predictions_pb2.ChatMessage(role="user", content=question)],
            prompt="...", completion=completion, finish_reason="stop", context_chunk_ids=["chunk-1", "chunk-2"]),
        prompt=common_pb2.ModelRef(name=f"{app_name}-prompt", version=4),
        chunks=[reviews_pb2.ReviewChunk(chunk_id="chunk-1", document_id="disputes.md", title="Disputes",
                                        text="Card payments can be disputed within 60 days of the statement.",
                                        score=0.83),
                reviews_pb2.ReviewChunk(chunk_id="chunk-2", document_id="fees.md", title="Fees",
                                        text="Disputes are free of charge.", score=0.41)],
        context={"feedback": "thumbs down", "user_comment": "that is wrong"})
    request.requested_at.FromDatetime(datetime.now(UTC))
    return Event(REVIEWS_REQUESTED, request_id, request, "tests")


async def create_token(infra: Any, principal: str, role: str) -> str:
    store = TokenStore(Database(infra.database_url, "auth", min_size=1, max_size=1))
    await store.db.pool.open(wait=True, timeout=30)
    try:
        token, _ = await store.create(principal, [role], created_by="tests")
        return token
    finally:
        await store.db.close()


def client(url: str, token: str | None = None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0)


async def wait_open(http: httpx.AsyncClient, queue: str, count: int, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until `queue` shows `count` open items (positive barrier); returns the queue's row."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        response = await http.get("/api/v1/queues")
        response.raise_for_status()
        last = {q["queue"]: q for q in response.json()}.get(queue)
        if last is not None and last["open"] >= count:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"queue {queue} never had {count} open items; last {last}")


def event_ids(records: Sequence[Any]) -> list[str]:
    return [dict(r.headers).get("ce_id", b"").decode() for r in records]
