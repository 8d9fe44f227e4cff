"""Transactional outbox: state change and event in one database transaction.

`enqueue` writes an event into the service's `outbox` table inside the caller's
transaction. The `OutboxRelay` publishes unsent rows in order and marks them sent
only after the broker acknowledged them; while the broker is down the rows wait,
so nothing is lost. A crash between publish and mark re-sends: consumers drop the
duplicate by its event id.

An event may be held back (`enqueue(..., not_before=...)`) while the change that caused it can
still be taken back: `withdraw` deletes held rows in the caller's transaction, and refuses (returns
fewer) once the relay may have sent them. The review app holds a decision's events for its undo
window this way, so an undone decision never leaves a published event behind.

An event the broker could never accept must not block its schema's outbox forever:
`enqueue` refuses one over the message size limit (`InvalidArgument`, so the caller's
transaction rolls back), and the relay parks a row the broker refuses for good
(`parked_at`, `error`) and goes on with the next ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from prometheus_client import Counter, Gauge
from psycopg import AsyncConnection, OperationalError, sql
from psycopg_pool import PoolTimeout

from flywheel.common.db import Database
from flywheel.common.errors import InvalidArgument
from flywheel.common.events import Event
from flywheel.common.kafka import ensure_topic_names, ensure_topics, new_producer
from flywheel.common.supervise import Backoff, HealthReporter
from flywheel.common.tasks import cancel_and_wait, within
from flywheel.common.telemetry import current_traceparent
from flywheel.common.topics import ALL_TOPICS, BY_NAME

log = logging.getLogger(__name__)

OUTBOX_PUBLISHED = Counter("flywheel_outbox_published_total", "Outbox rows published.", ["schema"])
OUTBOX_FAILURES = Counter("flywheel_outbox_publish_failures_total", "Failed outbox publish attempts.", ["schema"])
OUTBOX_PENDING = Gauge("flywheel_outbox_pending", "Outbox rows not yet published (at last check).", ["schema"])
OUTBOX_PARKED = Counter("flywheel_outbox_parked_total",
                        "Outbox rows the broker can never accept, set aside (parked_at) with their error.", ["schema"])
RELAY_RESTARTS = Counter("flywheel_outbox_relay_restarts_total",
                         "Times an outbox relay's loop crashed and was restarted.", ["schema"])

MAX_MESSAGE_BYTES_ENV = "FLYWHEEL_KAFKA_MAX_MESSAGE_BYTES"
# A bit under Kafka's default limit (message.max.bytes = 1 MiB + 12), leaving room for the record
# and batch overhead that is added to key + value + headers on the wire.
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
# Failures that will not go away by sending the same record again: the row is parked.
REFUSED_FOR_GOOD = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidTopicError)
# Outages the relay waits out in its loop (see `OutboxRelay._run`).
OUTAGES = (KafkaError, OSError, TimeoutError, OperationalError, PoolTimeout)
TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


def max_message_bytes_from_env() -> int:
    """The largest event (key + value + headers, in bytes) the outbox accepts: the environment's
    FLYWHEEL_KAFKA_MAX_MESSAGE_BYTES (set it to what your brokers and topics allow) or 1,000,000."""
    raw = os.environ.get(MAX_MESSAGE_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_MESSAGE_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_MESSAGE_BYTES_ENV}={raw!r} is not a number of bytes") from None
    if value <= 0:
        raise ValueError(f"{MAX_MESSAGE_BYTES_ENV} must be positive, got {value}")
    return value


MAX_MESSAGE_BYTES = max_message_bytes_from_env()


def valid_topic_name(name: str) -> bool:
    """Kafka's rule: 1-249 of [a-zA-Z0-9._-], and not `.` or `..`."""
    return bool(TOPIC_NAME.match(name)) and name not in (".", "..")


def encoded_size(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    return len(key) + len(value) + sum(len(k.encode()) + len(v) for k, v in headers)


def channel(schema: str) -> str:
    """The NOTIFY channel that wakes a schema's relay (enqueue builds the same name in SQL)."""
    return f"flywheel_outbox_{schema}"


async def enqueue(conn: AsyncConnection, event: Event, *, max_bytes: int | None = None,
                  not_before: datetime | None = None) -> None:
    """Add an event to the outbox in the caller's transaction (and wake the relay at commit).

    `not_before`: hold the event until then (the relay sends it at its first poll after that time,
    within `poll_interval`); until then `withdraw` can take it back.

    Raises `InvalidArgument` for an event the broker could never take, larger (key + value +
    headers) than `max_bytes` (default `MAX_MESSAGE_BYTES`): the caller's transaction rolls back
    and its caller gets a clear error, instead of a row that would never leave the outbox.
    """
    if not event.traceparent:
        event.traceparent = current_traceparent()
    key, value, headers = event.encode()
    limit = MAX_MESSAGE_BYTES if max_bytes is None else max_bytes
    size = encoded_size(key, value, headers)
    if size > limit:
        raise InvalidArgument(
            f"event for topic {event.topic.name} is {size} bytes (key + value + headers), over the "
            f"{limit}-byte message size limit ({MAX_MESSAGE_BYTES_ENV})")
    if not valid_topic_name(event.topic.name):
        raise InvalidArgument(f"{event.topic.name!r} is not a valid Kafka topic name")
    # One round trip: the insert and the wake-up (notifications are delivered at commit).
    await conn.execute(
        "WITH added AS (INSERT INTO outbox (event_id, topic, key, payload, headers, not_before)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING 1)"
        " SELECT pg_notify('flywheel_outbox_' || current_schema(), '') FROM added",
        (event.id, event.topic.name, key.decode(), value, json.dumps([[k, v.decode()] for k, v in headers]),
         not_before),
    )


async def withdraw(conn: AsyncConnection, event_ids: Sequence[str]) -> int:
    """Take back events not sent yet, in the caller's transaction; returns how many were taken back.

    A row the relay is publishing right now is locked: this waits for it, then finds it sent and
    does not count it. So a caller that needs all of them back (an undo) checks the count and rolls
    back when it is short: the event is out, and the change it reports must stand.
    """
    if not event_ids:
        return 0
    cur = await conn.execute("DELETE FROM outbox WHERE event_id = ANY(%s) AND sent_at IS NULL AND parked_at IS NULL",
                             (list(event_ids),))
    return cur.rowcount


class OutboxRelay:
    """Publishes a schema's outbox to Kafka, in id order, until stopped.

    Rows go out in id order, so events of one key keep their order, with one exception: a row
    the broker refuses for good (larger than its message size limit, an invalid topic name) is
    parked (`parked_at` and `error` set, counted in `flywheel_outbox_parked_total`, logged) and
    the relay goes on, so later rows of the same key may go out without it. Parked rows are kept
    for an operator (`SELECT id, topic, error FROM <schema>.outbox WHERE parked_at IS NOT NULL`);
    clearing `parked_at` makes the relay try a row again. A held row (`not_before` in the future)
    waits for its time while later rows go out: hold every event of a key alike to keep its order.

    The relay supervises itself: if its loop crashes (anything but the outages it waits out), it
    logs it, reports down to `health` (e.g. `RpcServer.component_health`), and restarts after an
    exponential `restart_backoff`, reporting healthy again as it restarts.
    """

    def __init__(self, db: Database, bootstrap: str, *, client_id: str, batch_size: int = 500,
                 poll_interval: float = 1.0, idempotent: bool = False,
                 retention: timedelta = timedelta(days=7), send_timeout: float = 15.0,
                 max_message_bytes: int | None = None, health: HealthReporter | None = None,
                 restart_backoff: Backoff | None = None) -> None:
        self.db = db
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.idempotent = idempotent
        self.retention = retention
        self.send_timeout = send_timeout
        # What enqueue lets through must never be refused by our own producer: leave room for the
        # record and batch overhead (the broker's limit is what `max_message_bytes` stands for).
        limit = MAX_MESSAGE_BYTES if max_message_bytes is None else max_message_bytes
        self.max_request_size = max(1024 * 1024, limit + 64 * 1024)
        self.health = health
        self.restart_backoff = restart_backoff or Backoff(initial=0.5, cap=30.0, reset_after=60.0)
        self.restarts = 0
        self.healthy = False
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._listener: asyncio.Task | None = None

    async def start(self) -> None:
        self._report(True)
        self._task = asyncio.create_task(self._supervise(), name=f"outbox-{self.db.schema}")
        self._listener = asyncio.create_task(self._listen(), name=f"outbox-listen-{self.db.schema}")

    async def stop(self) -> None:
        await cancel_and_wait([self._listener, self._task])
        self._listener = self._task = None
        await self._close_producer()
        self._report(False)

    def wake(self) -> None:
        self._wake.set()

    def _report(self, healthy: bool) -> None:
        self.healthy = healthy
        if self.health is not None:
            self.health(healthy)

    async def _listen(self) -> None:
        """Wake the relay on NOTIFY so events go out without waiting for the poll interval.

        It never dies of an error (it reconnects), and if it were gone the relay would still
        poll every `poll_interval`: it needs no supervision of its own nor a health flag."""
        while True:
            try:
                conn = await AsyncConnection.connect(self.db.url, autocommit=True)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel(self.db.schema))))
                    async for _ in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox listener reconnecting", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._run()
                error: BaseException = RuntimeError("the outbox relay loop returned")
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # stop()
                error = exc
            except Exception as exc:
                error = exc
            self._report(False)
            RELAY_RESTARTS.labels(self.db.schema).inc()
            delay = self.restart_backoff.delay(loop.time() - started)
            log.error("outbox relay crashed; restarting", exc_info=error, extra={
                "schema": self.db.schema, "error": repr(error), "restart_in_s": delay})
            await self._close_producer()
            await asyncio.sleep(delay)
            self.restarts += 1
            self._report(True)

    async def _run(self) -> None:
        """Publish until cancelled.

        A broker or database outage is waited out here, with backoff, and the relay stays
        healthy: readiness decides whether this service should get requests, and during a broker
        outage it should (its writes land in the outbox, which is what the outbox is for);
        NOT_SERVING would turn a broker outage into an outage of every producing service. The
        backlog shows in `flywheel_outbox_pending` and `flywheel_outbox_publish_failures_total`.
        Anything else is a bug or a broken schema: it escapes to `_supervise` (down, restart).
        """
        backoff = 0.2
        cleaned_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                sent = await self.publish_pending()
                backoff = 0.2
                if loop.time() - cleaned_at > 3600:
                    await self._clean()
                    cleaned_at = loop.time()
                if sent >= self.batch_size:
                    continue
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(self._wake.wait(), self.poll_interval)
                self._wake.clear()
            except OUTAGES as exc:
                OUTBOX_FAILURES.labels(self.db.schema).inc()
                log.warning("outbox publish failed; will retry", extra={
                    "schema": self.db.schema, "error": repr(exc), "retry_in_s": backoff})
                await self._close_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            # A restarted broker may have lost its topics (the embedded one keeps none).
            await ensure_topics(self.bootstrap, ALL_TOPICS)
            producer = new_producer(self.bootstrap, client_id=self.client_id, idempotent=self.idempotent,
                                    request_timeout_ms=5_000, max_request_size=self.max_request_size)
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _close_producer(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await within(self._producer.stop(), 5.0)
            self._producer = None

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows; returns how many left the queue (sent or parked)."""
        parked: dict[int, str] = {}
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT id, event_id, topic, key, payload, headers FROM outbox"
                " WHERE sent_at IS NULL AND parked_at IS NULL AND (not_before IS NULL OR not_before <= now())"
                " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED", (self.batch_size,))
            rows = await cur.fetchall()
            if not rows:
                OUTBOX_PENDING.labels(self.db.schema).set(0)
                return 0
            for row in rows:
                if not valid_topic_name(row["topic"]):
                    parked[row["id"]] = f"InvalidTopicError: {row['topic']!r} is not a valid Kafka topic name"
            sendable = [row for row in rows if row["id"] not in parked]
            if sendable:
                producer = await self._ensure_producer()
                await self._ensure_row_topics(producer, {row["topic"] for row in sendable})
                # A send to a broker that died (or came back without its topics) can wait
                # forever; bound it, so the relay starts over with a fresh producer.
                parked.update(await within(self._send(producer, sendable), self.send_timeout))
            sent = [row["id"] for row in rows if row["id"] not in parked]
            if sent:
                await conn.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY(%s)", (sent,))
            if parked:
                await conn.execute(
                    "UPDATE outbox SET parked_at = now(), error = p.error"
                    " FROM unnest(%s::bigint[], %s::text[]) AS p(id, error) WHERE outbox.id = p.id",
                    (list(parked), [e[:4000] for e in parked.values()]))
        OUTBOX_PUBLISHED.labels(self.db.schema).inc(len(sent))
        if parked:
            OUTBOX_PARKED.labels(self.db.schema).inc(len(parked))
            for row in rows:
                if row["id"] in parked:
                    log.error("outbox row parked: the broker can never accept it", extra={
                        "schema": self.db.schema, "outbox_id": row["id"], "event_id": row["event_id"],
                        "topic": row["topic"], "error": parked[row["id"]]})
        OUTBOX_PENDING.labels(self.db.schema).set(0 if len(rows) < self.batch_size else len(rows))
        return len(rows)

    async def _ensure_row_topics(self, producer: AIOKafkaProducer, names: set[str]) -> None:
        """Make sure the topics exist right now, not just in the producer's cached metadata.

        A restarted memory-only broker (the embedded one) has no topics, yet acknowledges
        a produce to a topic it does not have and drops the data; checking fresh metadata
        before each batch closes that hole (but for a restart in between).
        """
        if not await producer.client.force_metadata_update():
            raise KafkaConnectionError("could not refresh metadata from the broker")
        missing = names - producer.client.cluster.topics()
        if missing:
            log.warning("topics missing on the broker; creating them", extra={"topics": sorted(missing)})
            await ensure_topic_names(self.bootstrap, {n: BY_NAME[n].partitions if n in BY_NAME else 1
                                                      for n in missing})
            await producer.client.force_metadata_update()

    @staticmethod
    def _record(row: dict[str, Any]) -> dict[str, Any]:
        return {"value": bytes(row["payload"]), "key": row["key"].encode(),
                "headers": [(k, v.encode()) for k, v in row["headers"]]}

    async def _send(self, producer: AIOKafkaProducer, rows: list[dict[str, Any]]) -> dict[int, str]:
        """Send the rows and wait for the broker's acknowledgements. Returns the rows refused for
        good (id -> error); raises on any other failure (the whole batch is tried again)."""
        refused: dict[int, BaseException] = {}
        pending = []
        for row in rows:
            try:
                pending.append((row, await producer.send(row["topic"], **self._record(row))))
            except REFUSED_FOR_GOOD as exc:  # refused before sending (e.g. over max_request_size)
                refused[row["id"]] = exc
        results = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
        alone = []
        for (row, _), result in zip(pending, results, strict=True):
            if isinstance(result, REFUSED_FOR_GOOD):
                alone.append(row)
            elif isinstance(result, asyncio.CancelledError):  # the producer closed under the send
                raise KafkaConnectionError("send cancelled") from result
            elif isinstance(result, BaseException):
                raise result
        # The broker answers for a whole batch: send each refused row again on its own, so only
        # the rows really at fault are parked.
        for row in alone:
            try:
                await producer.send_and_wait(row["topic"], **self._record(row))
            except REFUSED_FOR_GOOD as exc:
                refused[row["id"]] = exc
        return {row_id: f"{type(exc).__name__}: {exc}" for row_id, exc in refused.items()}

    async def _clean(self) -> None:
        async with self.db.connection() as conn:
            await conn.execute("DELETE FROM outbox WHERE sent_at < now() - %s", (self.retention,))
