"""Publishing documents.embedded straight to Kafka, waiting for the broker's acknowledgement.

Why not the outbox: the embedder has no state of its own to change atomically with the event (its
output is a pure function of the input event: same text, same version -> same chunk ids and the same
event id), so nothing is gained by a transaction, and the outbox would copy every vector payload (up to
~1 MB per document) into PostgreSQL only to delete it a week later. The consumer publishes before it
records the input event as processed and before it commits the offset: a crash in between re-embeds the
document and publishes the same event again (same event id, same chunk ids), which the retriever drops
or upserts idempotently. A broker outage raises `Unavailable`: the consumer waits and retries, the
partition stalls, nothing is lost or dead-lettered.

The embedded broker acknowledges a produce to a topic it does not have (after a restart it has none)
and drops it; so before each send the topic is checked in fresh metadata and created when missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from flywheel.common.errors import PoisonEvent, Unavailable
from flywheel.common.events import Event
from flywheel.common.kafka import ensure_topics, new_producer, send_events
from flywheel.common.tasks import within
from flywheel.common.topics import Topic

log = logging.getLogger(__name__)


class DirectPublisher:
    def __init__(self, bootstrap: str, topic: Topic, *, client_id: str, max_message_bytes: int,
                 idempotent: bool = False, send_timeout: float = 30.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.client_id = client_id
        # Our own producer must never refuse what the size check let through: room for record overhead.
        self.max_request_size = max(1024 * 1024, max_message_bytes + 64 * 1024)
        self.idempotent = idempotent
        self.send_timeout = send_timeout
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def stop(self) -> None:
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await within(self._producer.stop(), 5.0)
            self._producer = None

    async def _ready(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = new_producer(self.bootstrap, client_id=self.client_id, idempotent=self.idempotent,
                                    request_timeout_ms=10_000, max_request_size=self.max_request_size)
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
        producer = self._producer
        if not await producer.client.force_metadata_update():
            raise KafkaError("could not refresh metadata from the broker")
        if self.topic.name not in producer.client.cluster.topics():
            log.warning("topic missing on the broker; creating it", extra={"topic": self.topic.name})
            await ensure_topics(self.bootstrap, [self.topic])
            await producer.client.force_metadata_update()
        return producer

    async def send(self, events: Sequence[Event]) -> None:
        """Publish and wait until the broker acknowledged every event; `Unavailable` if it did not, and
        `PoisonEvent` when the broker refuses an event as too large (it never will take it)."""
        if not events:
            return
        async with self._lock:
            try:
                producer = await self._ready()
                await within(send_events(producer, events), self.send_timeout)
            except (MessageSizeTooLargeError, RecordListTooLargeError) as exc:
                await self._close()
                raise PoisonEvent(f"the broker refuses the {self.topic.name} event as too large ({exc}): lower "
                                  "FLYWHEEL_KAFKA_MAX_MESSAGE_BYTES to what the brokers accept") from exc
            except (KafkaError, OSError, TimeoutError) as exc:
                await self._close()
                raise Unavailable(f"the broker did not take {len(events)} {self.topic.name} event(s): "
                                  f"{type(exc).__name__}: {exc}") from exc
