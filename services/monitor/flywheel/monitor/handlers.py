"""The faust stream app: predictions.logged and feedback.received in batches, applied to
PostgreSQL in one transaction per batch; offsets are acknowledged only after the commit.

faust reads raw bytes; `flywheel.common.events` decodes them, and a record that is not a valid
event goes to `<topic>.dlq` (with the same dlq_* headers as flywheel.common.kafka) while the
stream keeps going. faust's tables are not used: their changelogs live only in the broker and a
replay after a crash would count twice; the database is the record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from psycopg import AsyncConnection, OperationalError
from psycopg.errors import DeadlockDetected, SerializationFailure
from psycopg_pool import PoolTimeout

from flywheel.common.db import Database
from flywheel.common.errors import PoisonEvent
from flywheel.common.events import Event, decode, header_map
from flywheel.common.topics import FEEDBACK_RECEIVED, PREDICTIONS_LOGGED, Topic
from flywheel.monitor import metrics
from flywheel.monitor.config import MonitorSettings
from flywheel.monitor.ingest import Ingest
from flywheel.monitor.llm import OnlineScoring

log = logging.getLogger(__name__)
TRANSIENT = (OperationalError, PoolTimeout, DeadlockDetected, SerializationFailure)
Apply = Callable[[AsyncConnection, list[Event]], Awaitable[Any]]


class DeadLetters:
    """Publishes records that cannot be handled to `<topic>.dlq`, waiting until the broker has them."""

    def __init__(self, producer: AIOKafkaProducer, group: str) -> None:
        self.producer = producer
        self.group = group

    async def send(self, message: Any, topic: Topic, error: BaseException) -> None:
        headers = [(k, v) for k, v in (message.headers or []) if not k.startswith("dlq_")] + [
            ("dlq_error", f"{type(error).__name__}: {error}"[:4000].encode()),
            ("dlq_consumer", self.group.encode()),
            ("dlq_source", f"{message.topic}/{message.partition}/{message.offset}".encode()),
            ("dlq_attempts", b"1"),
        ]
        backoff = 0.5
        while True:  # the offset is acknowledged only once the record is safe in the DLQ
            try:
                await self.producer.send_and_wait(topic.dlq, value=message.value, key=message.key, headers=headers)
                break
            except KafkaError as exc:
                log.error("dead-letter publish failed, retrying", extra={"topic": topic.dlq, "error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        metrics.DEAD_LETTERED.labels(topic.name).inc()
        log.error("event dead-lettered to %s: %s", topic.dlq, error, extra={
            "consumer": self.group, "topic": topic.name, "error": str(error),
            "event_id": header_map(message.headers or []).get("ce_id", ""),
            "source": f"{message.partition}/{message.offset}"})


class MonitorStream:
    """Builds the faust app; `start`/`stop` run it inside the caller's event loop."""

    def __init__(self, settings: MonitorSettings, db: Database, ingest: Ingest, dead_letters: DeadLetters,
                 online: OnlineScoring | None = None) -> None:
        self.settings = settings
        self.db = db
        self.ingest = ingest
        self.online = online or OnlineScoring(settings)
        self.dead_letters = dead_letters
        self.batches = 0
        self.app = faust.App(
            settings.consumer_group, broker=f"kafka://{settings.kafka_bootstrap}",
            value_serializer="raw", key_serializer="raw", web_enabled=False,
            broker_session_timeout=settings.broker_session_timeout,
            broker_rebalance_timeout=settings.broker_rebalance_timeout,
            broker_heartbeat_interval=min(1.0, settings.broker_session_timeout / 3),
            broker_commit_interval=0.5, consumer_auto_offset_reset="earliest",
            topic_allow_declare=False, topic_disable_leader=True, loghandlers=[],
            datadir=str(Path(settings.home) / f"faust-{settings.consumer_group}"),
        )
        self._agent(PREDICTIONS_LOGGED, self._predictions)
        self._agent(FEEDBACK_RECEIVED, self._feedback)

    async def _predictions(self, conn: AsyncConnection, events: list[Event]) -> None:
        """Tabular rows into drift windows and LLM answers into online scoring, in one transaction."""
        await self.ingest.predictions(conn, events)
        await self.online.predictions(conn, events)

    async def _feedback(self, conn: AsyncConnection, events: list[Event]) -> None:
        await self.online.feedback(conn, events)
        await self.ingest.feedback(conn, events, self.settings.consumer_group)

    def _agent(self, topic: Topic, apply: Apply) -> None:
        source = self.app.topic(topic.name, value_type=bytes, key_type=bytes,
                                value_serializer="raw", key_serializer="raw")

        async def consume(stream: Any) -> None:
            async for batch in stream.noack_take(self.settings.batch_size, within=self.settings.batch_within):
                await self._handle(topic, batch, apply)
                for event in batch:
                    await stream.ack(event)

        consume.__name__ = f"monitor_{topic.name.replace('.', '_')}"
        self.app.agent(source, name=f"monitor.{topic.name}")(consume)

    async def _handle(self, topic: Topic, batch: list[Any], apply: Apply) -> None:
        events: list[Event] = []
        for record in batch:
            message = record.message
            try:
                events.append(decode(topic, message.key, message.value, message.headers or []))
            except PoisonEvent as exc:
                await self.dead_letters.send(message, topic, exc)
        if not events:
            return
        try:
            await self._apply(apply, events)
        except PoisonEvent:
            await self._one_by_one(topic, batch, events, apply)
        except Exception:
            log.exception("batch failed; applying its events one at a time", extra={"topic": topic.name})
            await self._one_by_one(topic, batch, events, apply)
        self.batches += 1

    async def _one_by_one(self, topic: Topic, batch: list[Any], events: list[Event], apply: Apply) -> None:
        by_id = {}
        for record in batch:
            by_id.setdefault(header_map(record.message.headers or []).get("ce_id", ""), record.message)
        for event in events:
            try:
                await self._apply(apply, [event])
            except Exception as exc:
                await self.dead_letters.send(by_id[event.id], topic, exc)

    async def _apply(self, apply: Apply, events: list[Event]) -> None:
        backoff = 0.2
        while True:
            try:
                async with self.db.connection() as conn, conn.transaction():
                    await apply(conn, events)
                return
            except TRANSIENT as exc:
                # The database is down or two transactions collided: the events are fine, wait and retry.
                log.warning("ingest waiting for the database", extra={"error": repr(exc), "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def start(self) -> None:
        await self.app.start()

    async def stop(self) -> None:
        await self.app.stop()
