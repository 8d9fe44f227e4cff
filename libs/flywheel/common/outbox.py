"""Transactional outbox: state change and event in one database transaction.

`enqueue` writes an event into the service's `outbox` table inside the caller's
transaction. The `OutboxRelay` publishes unsent rows in order and marks them sent
only after the broker acknowledged them; while the broker is down the rows wait,
so nothing is lost. A crash between publish and mark re-sends: consumers drop the
duplicate by its event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import timedelta

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from prometheus_client import Counter, Gauge
from psycopg import AsyncConnection, sql

from flywheel.common.db import Database
from flywheel.common.events import Event
from flywheel.common.kafka import ensure_topic_names, ensure_topics, new_producer
from flywheel.common.telemetry import current_traceparent
from flywheel.common.topics import ALL_TOPICS, BY_NAME

log = logging.getLogger(__name__)

OUTBOX_PUBLISHED = Counter("flywheel_outbox_published_total", "Outbox rows published.", ["schema"])
OUTBOX_FAILURES = Counter("flywheel_outbox_publish_failures_total", "Failed outbox publish attempts.", ["schema"])
OUTBOX_PENDING = Gauge("flywheel_outbox_pending", "Outbox rows not yet published (at last check).", ["schema"])


def channel(schema: str) -> str:
    """The NOTIFY channel that wakes a schema's relay (enqueue builds the same name in SQL)."""
    return f"flywheel_outbox_{schema}"


async def enqueue(conn: AsyncConnection, event: Event) -> None:
    """Add an event to the outbox in the caller's transaction (and wake the relay at commit)."""
    if not event.traceparent:
        event.traceparent = current_traceparent()
    key, value, headers = event.encode()
    # One round trip: the insert and the wake-up (notifications are delivered at commit).
    await conn.execute(
        "WITH added AS (INSERT INTO outbox (event_id, topic, key, payload, headers)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING 1)"
        " SELECT pg_notify('flywheel_outbox_' || current_schema(), '') FROM added",
        (event.id, event.topic.name, key.decode(), value, json.dumps([[k, v.decode()] for k, v in headers])),
    )


class OutboxRelay:
    """Publishes a schema's outbox to Kafka, in id order, until stopped."""

    def __init__(self, db: Database, bootstrap: str, *, client_id: str, batch_size: int = 500,
                 poll_interval: float = 1.0, idempotent: bool = False,
                 retention: timedelta = timedelta(days=7), send_timeout: float = 15.0) -> None:
        self.db = db
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.idempotent = idempotent
        self.retention = retention
        self.send_timeout = send_timeout
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._listener: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-{self.db.schema}")
        self._listener = asyncio.create_task(self._listen(), name=f"outbox-listen-{self.db.schema}")

    async def stop(self) -> None:
        for task in (self._listener, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._close_producer()

    def wake(self) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        """Wake the relay on NOTIFY so events go out without waiting for the poll interval."""
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

    async def _run(self) -> None:
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
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                self._wake.clear()
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError, TimeoutError) as exc:
                OUTBOX_FAILURES.labels(self.db.schema).inc()
                log.warning("outbox publish failed; will retry", extra={
                    "schema": self.db.schema, "error": repr(exc), "retry_in_s": backoff})
                await self._close_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("outbox relay error; will retry", extra={"schema": self.db.schema})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            # A restarted broker may have lost its topics (the embedded one keeps none).
            await ensure_topics(self.bootstrap, ALL_TOPICS)
            producer = new_producer(self.bootstrap, client_id=self.client_id, idempotent=self.idempotent,
                                    request_timeout_ms=5_000)
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
                await asyncio.wait_for(self._producer.stop(), 5.0)
            self._producer = None

    async def publish_pending(self) -> int:
        """Publish one batch of unsent rows; returns how many went out."""
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT id, topic, key, payload, headers FROM outbox WHERE sent_at IS NULL "
                "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED", (self.batch_size,))
            rows = await cur.fetchall()
            if not rows:
                OUTBOX_PENDING.labels(self.db.schema).set(0)
                return 0
            producer = await self._ensure_producer()
            await self._ensure_row_topics(producer, {row["topic"] for row in rows})
            # A send to a broker that died (or came back without its topics) can wait
            # forever; bound it, so the relay starts over with a fresh producer.
            await asyncio.wait_for(self._send(producer, rows), self.send_timeout)
            await conn.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY(%s)", ([r["id"] for r in rows],))
        OUTBOX_PUBLISHED.labels(self.db.schema).inc(len(rows))
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
    async def _send(producer: AIOKafkaProducer, rows: list[dict]) -> None:
        futures = [
            await producer.send(row["topic"], value=bytes(row["payload"]), key=row["key"].encode(),
                                headers=[(k, v.encode()) for k, v in row["headers"]])
            for row in rows
        ]
        await asyncio.gather(*futures)

    async def _clean(self) -> None:
        async with self.db.connection() as conn:
            await conn.execute("DELETE FROM outbox WHERE sent_at < now() - %s", (self.retention,))
