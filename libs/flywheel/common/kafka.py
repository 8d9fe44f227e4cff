"""Kafka plumbing: topic admin, producers, a bounded fire-and-forget publisher, and a
consumer runner that makes handlers idempotent and dead-letters what it cannot handle.

Correctness never depends on idempotent producers or transactions (the embedded
broker lacks them): delivery is at-least-once, and every consumer records the ids of
the events it processed in the same database transaction as their effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram
from psycopg import AsyncConnection, OperationalError
from psycopg_pool import PoolTimeout

from flywheel.common.db import Database
from flywheel.common.errors import PoisonEvent, Unavailable
from flywheel.common.events import Event, decode, header_map
from flywheel.common.supervise import Backoff, HealthReporter
from flywheel.common.tasks import cancel_and_wait, within
from flywheel.common.telemetry import context_from, current_traceparent
from flywheel.common.topics import Topic

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

EVENTS_CONSUMED = Counter("flywheel_events_consumed_total", "Events handled by a consumer.",
                          ["consumer", "topic", "outcome"])
HANDLER_SECONDS = Histogram("flywheel_event_handler_seconds", "Time to handle one event.", ["consumer", "topic"])
EVENTS_PUBLISHED = Counter("flywheel_events_published_total", "Events acknowledged by the broker.", ["topic"])
EVENTS_DROPPED = Counter("flywheel_events_dropped_total", "Events a bounded publisher dropped.", ["topic", "reason"])
PUBLISH_QUEUE = Gauge("flywheel_publish_queue_depth", "Events waiting in a bounded publisher.", ["publisher"])
CONSUMER_RESTARTS = Counter("flywheel_consumer_restarts_total",
                            "Times a consumer's loop died and the runner restarted it.", ["consumer"])

# A handler applies one event inside the runner's transaction (`conn`); raising rolls it back.
Handler = Callable[[Event, AsyncConnection], Awaitable[None]]
# Failures of infrastructure, not of the event: retried until they pass, never dead-lettered.
TRANSIENT = (OperationalError, PoolTimeout, Unavailable)
# A batch handler applies several events (new ones only, in offset order) in one transaction.
BatchHandler = Callable[[list[Event], AsyncConnection], Awaitable[None]]


async def ensure_topics(bootstrap: str, topics: Iterable[Topic], *, dead_letters: bool = True,
                        replication: int = 1) -> None:
    """Create the topics (and their `.dlq` twins) that do not exist yet; safe to repeat."""
    wanted = {}
    for t in topics:
        wanted[t.name] = t.partitions
        if dead_letters:
            wanted[t.dlq] = 1
    await ensure_topic_names(bootstrap, wanted, replication=replication)


async def ensure_topic_names(bootstrap: str, partitions: dict[str, int], *, replication: int = 1) -> None:
    """Create the named topics (name -> partition count) that do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        missing = set(partitions) - set(await admin.list_topics())
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(n, partitions[n], replication) for n in sorted(missing)])
    finally:
        await admin.close()


def new_producer(bootstrap: str, *, client_id: str, idempotent: bool = False,
                 request_timeout_ms: int = 10_000, linger_ms: int = 5,
                 max_request_size: int = 1024 * 1024) -> AIOKafkaProducer:
    """A producer with acks=all; idempotence only where the broker supports it (real Kafka).
    A record larger than `max_request_size` is refused before it is sent (MessageSizeTooLargeError)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, client_id=client_id, acks="all", enable_idempotence=idempotent,
        linger_ms=linger_ms, request_timeout_ms=request_timeout_ms, max_batch_size=256 * 1024,
        max_request_size=max_request_size,
    )


_PARTITIONER = DefaultPartitioner()
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's `Utils.murmur2`, which aiokafka's default partitioner also
    uses), reading the key in 32-bit words at once: about twice as fast as aiokafka's byte-wise one."""
    length = len(data)
    h = 0x9747B28C ^ length
    whole = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    extra = length - whole
    if extra >= 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h = ((h ^ data[whole]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition_of(key: bytes, partitions: Sequence[int]) -> int:
    """The partition aiokafka's (and the Java client's) default partitioner gives `key` among the sorted
    `partitions`."""
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


async def send_events(producer: AIOKafkaProducer, events: Sequence[Event]) -> None:
    """Send events and wait until the broker acknowledged all of them (in order per partition).

    The events are appended to one record batch per partition, the partition the producer's default
    partitioner gives their key (murmur2, as Java clients do): a batch of n events costs n appends and
    one `send_batch` per partition instead of n `send` coroutines. An event too large for a batch goes
    alone through `send` (which refuses what exceeds max_request_size).
    """
    if not events:
        return
    futures = []
    builders: dict[tuple[str, int], Any] = {}
    partitions: dict[str, list[int]] = {}
    counts: dict[str, int] = {}
    for event in events:
        topic = event.topic.name
        key, value, headers = event.encode()
        if topic not in partitions:
            partitions[topic] = sorted(await producer.partitions_for(topic))
        every = partitions[topic]
        partition = partition_of(key, every) if key is not None else _PARTITIONER(key, every, every)
        builder = builders.get((topic, partition))
        if builder is None:
            builder = builders[topic, partition] = producer.create_batch()
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
            if builder.record_count():  # full: off it goes, the event starts the next batch
                futures.append(await producer.send_batch(builder, topic, partition=partition))
                builder = builders[topic, partition] = producer.create_batch()
            if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                futures.append(await producer.send(topic, value=value, key=key, headers=headers, partition=partition))
        counts[topic] = counts.get(topic, 0) + 1
    for (topic, partition), builder in builders.items():
        if builder.record_count():
            futures.append(await producer.send_batch(builder, topic, partition=partition))
    await asyncio.gather(*futures)
    for topic, n in counts.items():
        EVENTS_PUBLISHED.labels(topic).inc(n)


class BoundedPublisher:
    """Fire-and-forget publishing for hot paths: `publish` never waits on the broker.

    Events go to a bounded in-memory queue drained in batches by a background task.
    When the queue is full (slow or absent broker) the event is dropped, counted in
    `flywheel_events_dropped_total` and logged (at most once per second), so the
    caller's latency never depends on Kafka. A batch that fails for another reason is
    dropped too (reason `error`): the drain task never dies of it. Use the outbox instead
    when an event must not be lost.
    """

    def __init__(self, bootstrap: str, *, name: str, max_queue: int = 10_000, max_batch: int = 500,
                 idempotent: bool = False, linger_s: float = 0.02) -> None:
        """`linger_s`: how long the drain task lets events gather after the first one of a batch (unless
        `max_batch` are queued already): one produce request per batch costs the event loop far less
        than one per event when events come one by one."""
        self.bootstrap = bootstrap
        self.name = name
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.idempotent = idempotent
        self.queue: asyncio.Queue[Event] = asyncio.Queue(max_queue)
        self.dropped = 0
        self._task: asyncio.Task | None = None
        self._last_drop_log = 0.0
        # Read when /metrics is scraped: nothing to update per event.
        PUBLISH_QUEUE.labels(name).set_function(self.queue.qsize)

    def publish(self, event: Event) -> bool:
        """Queue an event; False (and counted) when it had to be dropped."""
        if not event.traceparent:
            event.traceparent = current_traceparent()
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self._drop(event, "queue_full")
            return False
        return True

    def _drop(self, event: Event, reason: str) -> None:
        self.dropped += 1
        EVENTS_DROPPED.labels(event.topic.name, reason).inc()
        now = asyncio.get_running_loop().time()
        if now - self._last_drop_log >= 1.0:
            self._last_drop_log = now
            log.warning("event dropped", extra={"publisher": self.name, "topic": event.topic.name,
                                                "reason": reason, "dropped_total": self.dropped})

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"publisher-{self.name}")

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Give queued events `drain_timeout` seconds to go out, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await within(self.queue.join(), drain_timeout)
        await cancel_and_wait([self._task])
        self._task = None

    async def _run(self) -> None:
        producer: AIOKafkaProducer | None = None
        backoff = 0.2
        try:
            while True:
                batch = [await self.queue.get()]
                if self.linger_s > 0 and self.queue.qsize() < self.max_batch - 1:
                    await asyncio.sleep(self.linger_s)
                while len(batch) < self.max_batch and not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                try:
                    if producer is None:
                        producer = new_producer(self.bootstrap, client_id=self.name, idempotent=self.idempotent,
                                                request_timeout_ms=5_000)
                        await producer.start()
                    await send_events(producer, batch)
                    backoff = 0.2
                except (KafkaError, OSError) as exc:
                    # At-most-once by design here: a batch the broker did not take is dropped.
                    for event in batch:
                        self._drop(event, "broker_error")
                    log.warning("publish failed", extra={"publisher": self.name, "error": repr(exc)})
                    if producer is not None:
                        with contextlib.suppress(Exception):
                            await producer.stop()
                        producer = None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                except Exception:
                    # Not the broker (e.g. an event that cannot be encoded): drop this batch, keep
                    # draining; a drain task that died would silently drop everything from now on.
                    for event in batch:
                        self._drop(event, "error")
                    log.exception("publish failed unexpectedly", extra={"publisher": self.name})
                finally:
                    for _ in batch:
                        self.queue.task_done()
        finally:
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.stop()


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """`consumer.stop()`, minus a known aiokafka quirk (aio-libs/aiokafka#647): when a fetch is in its
    retry back-off (e.g. after a request timed out on a busy broker), closing the fetcher cancels it and
    the CancelledError escapes `stop()` although nobody cancelled the caller. The consumer is closed by
    then, so that error is logged and dropped; a real cancellation of this task still propagates."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("consumer stop: aiokafka's fetcher raised CancelledError while closing; the consumer is closed")


async def record_processed(conn: AsyncConnection, consumer: str, topic: str, event_ids: Sequence[str]) -> set[str]:
    """Record events as processed by `consumer`, in the caller's transaction (so with their effect);
    returns the ids seen for the first time: the others were processed before and must be skipped."""
    cur = await conn.execute(
        "INSERT INTO processed_events (consumer, event_id, topic) SELECT %s, id, %s"
        " FROM unnest(%s::text[]) AS id ON CONFLICT DO NOTHING RETURNING event_id",
        (consumer, topic, list(event_ids)))
    return {row["event_id"] for row in await cur.fetchall()}


class ConsumerRunner:
    """Consumes topics in a consumer group and applies each event exactly once in effect.

    For every record: decode it, then in one database transaction record its id in
    `processed_events` (a duplicate is skipped) and run the handler. Offsets are
    committed only after the handlers of a batch succeeded, so a crash redelivers
    and the id check drops what was already applied. A record that cannot be decoded,
    or whose handler keeps failing, goes to `<topic>.dlq` with the error in headers;
    the runner keeps going. Infrastructure failures (database down, a dependency
    `Unavailable`) are not the event's fault: they are retried until they pass.

    Topics with a batch handler are applied a fetched batch per partition at a time, in
    one transaction (for throughput); if that transaction fails, the batch is retried
    event by event, so one bad event still ends alone in the dead-letter topic.

    The runner supervises itself: when its loop dies (a `CommitFailedError` after a rebalance
    or a long outage, or anything unexpected), it logs it, reports down to `health` (e.g.
    `RpcServer.component_health`, so the service turns NOT_SERVING), closes the consumer and
    starts a new one after an exponential `restart_backoff`, which resumes from the committed
    offsets; once it runs it reports healthy again. A dependency outage waited out inside the
    loop (database down, `Unavailable`) is not a death: the service stays SERVING.
    """

    def __init__(self, *, bootstrap: str, group: str, db: Database, handlers: dict[Topic, Handler] | None = None,
                 batch_handlers: dict[Topic, BatchHandler] | None = None, source: str, max_attempts: int = 3,
                 retry_backoff: float = 0.2, consumer_options: dict[str, Any] | None = None,
                 health: HealthReporter | None = None, restart_backoff: Backoff | None = None) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.db = db
        self.handlers: dict[str, tuple[Topic, Handler]] = {t.name: (t, h) for t, h in (handlers or {}).items()}
        self.batch_handlers: dict[str, tuple[Topic, BatchHandler]] = {}
        for t, batch in (batch_handlers or {}).items():
            self.batch_handlers[t.name] = (t, batch)
            self.handlers[t.name] = (t, _one_at_a_time(batch))
        if not self.handlers:
            raise ValueError("a ConsumerRunner needs at least one handler")
        self.source = source
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.consumer_options = consumer_options or {}
        self.health = health
        self.restart_backoff = restart_backoff or Backoff(initial=0.5, cap=30.0, reset_after=60.0)
        self.consumer: AIOKafkaConsumer | None = None
        self.dlq_producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self.assigned = asyncio.Event()
        self.restarts = 0
        self.healthy = False

    async def start(self) -> None:
        """Start the consumer (failing if the broker cannot be reached) and the supervised loop."""
        await self._start_clients()
        self._report(True)
        self._task = asyncio.create_task(self._supervise(), name=f"consumer-{self.group}")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None
        await self._close_clients()
        self._report(False)

    def _report(self, healthy: bool) -> None:
        self.healthy = healthy
        if self.health is not None:
            self.health(healthy)

    async def _start_clients(self) -> None:
        # Again on every restart: a broker that came back empty (the embedded one) has no topics.
        await ensure_topics(self.bootstrap, [t for t, _ in self.handlers.values()])
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap, "group_id": self.group, "client_id": self.source,
            "enable_auto_commit": False, "auto_offset_reset": "earliest",
            # Short timeouts make a worker join its group in seconds on the embedded broker.
            "session_timeout_ms": 10_000, "heartbeat_interval_ms": 1_000, "rebalance_timeout_ms": 3_000,
            "max_poll_records": 500,
        }
        options.update(self.consumer_options)
        consumer = AIOKafkaConsumer(*self.handlers, **options)
        dlq_producer = new_producer(self.bootstrap, client_id=f"{self.source}-dlq")
        try:
            await dlq_producer.start()
            await consumer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await stop_consumer(consumer)
            with contextlib.suppress(Exception):
                await dlq_producer.stop()
            raise
        self.consumer, self.dlq_producer = consumer, dlq_producer

    async def _close_clients(self) -> None:
        consumer, dlq_producer = self.consumer, self.dlq_producer
        self.consumer = self.dlq_producer = None
        if consumer is not None:
            # Closing a consumer whose loop died may raise too; it is being replaced either way.
            with contextlib.suppress(Exception):
                await stop_consumer(consumer)
        if dlq_producer is not None:
            with contextlib.suppress(Exception):
                await dlq_producer.stop()

    async def _supervise(self) -> None:
        """Run the loop; when it dies (anything but cancellation: a CommitFailedError after a
        rebalance or a long outage, a bug), report down, close the clients, and start new ones
        after an exponential backoff, until that works. The new consumer resumes from the
        committed offsets: what the dead one applied but did not commit is redelivered, and
        `processed_events` drops it."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._run()
                error: BaseException = RuntimeError("the consumer loop returned")
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # stop(): not a death
                error = exc  # aiokafka cancelling one of its own futures under us (see stop_consumer)
            except Exception as exc:
                error = exc
            self._report(False)
            self.assigned.clear()
            CONSUMER_RESTARTS.labels(self.group).inc()
            delay = self.restart_backoff.delay(loop.time() - started)
            log.error("consumer loop died; restarting", exc_info=error, extra={
                "consumer": self.group, "error": repr(error), "restart_in_s": delay})
            await self._close_clients()
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._start_clients()
                    break
                except Exception as exc:
                    delay = self.restart_backoff.delay(0.0)
                    log.warning("consumer restart failed; retrying", extra={
                        "consumer": self.group, "error": repr(exc), "retry_in_s": delay})
            self.restarts += 1
            log.info("consumer restarted", extra={"consumer": self.group, "restarts": self.restarts})
            self._report(True)

    async def _run(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            if consumer.assignment():
                self.assigned.set()
            for tp, records in batches.items():
                if tp.topic in self.batch_handlers:
                    await self._process_batch(records)
                else:
                    for record in records:
                        await self._process(record)
                await consumer.commit({tp: records[-1].offset + 1})

    def _decode(self, record: ConsumerRecord) -> Event | PoisonEvent:
        topic, _ = self.handlers[record.topic]
        try:
            return decode(topic, record.key, record.value, record.headers)
        except PoisonEvent as exc:
            return exc

    async def _process(self, record: ConsumerRecord) -> None:
        event = self._decode(record)
        if isinstance(event, PoisonEvent):
            await self._dead_letter(record, self.handlers[record.topic][0], event, attempts=0)
            return
        await self._process_event(record, event)

    async def _process_batch(self, records: list[ConsumerRecord]) -> None:
        topic, handler = self.batch_handlers[records[0].topic]
        decoded: list[tuple[ConsumerRecord, Event]] = []
        for record in records:
            event = self._decode(record)
            if isinstance(event, PoisonEvent):
                await self._dead_letter(record, topic, event, attempts=0)
            else:
                decoded.append((record, event))
        if not decoded:
            return
        try:
            with tracer.start_as_current_span(f"consume {topic.name} batch",
                                              attributes={"messaging.system": "kafka",
                                                          "messaging.destination.name": topic.name,
                                                          "messaging.batch.message_count": len(decoded)}), \
                    HANDLER_SECONDS.labels(self.group, topic.name).time():
                async with self.db.connection() as conn, conn.transaction():
                    fresh = await record_processed(conn, self.group, topic.name, [e.id for _, e in decoded])
                    new: list[Event] = []
                    for _, event in decoded:
                        if event.id in fresh:
                            fresh.discard(event.id)  # a duplicate inside the batch is applied once
                            new.append(event)
                    if new:
                        await handler(new, conn)
        except Exception as exc:  # isolate the bad event by retrying one at a time
            log.warning("batch failed on %s; retrying event by event: %r", topic.name, exc, extra={
                "consumer": self.group, "topic": topic.name, "events": len(decoded), "error": repr(exc)})
            for record, event in decoded:
                await self._process_event(record, event)
            return
        EVENTS_CONSUMED.labels(self.group, topic.name, "handled").inc(len(new))
        EVENTS_CONSUMED.labels(self.group, topic.name, "duplicate").inc(len(decoded) - len(new))

    async def _process_event(self, record: ConsumerRecord, event: Event) -> None:
        topic, handler = self.handlers[record.topic]
        parent = context_from(event.traceparent)
        with tracer.start_as_current_span(f"consume {topic.name}", context=parent,
                                          attributes={"messaging.system": "kafka",
                                                      "messaging.destination.name": topic.name,
                                                      "messaging.message.id": event.id}):
            attempt = 0
            outage_backoff = self.retry_backoff
            while True:
                attempt += 1
                try:
                    with HANDLER_SECONDS.labels(self.group, topic.name).time():
                        applied = await self._apply(event, handler)
                    EVENTS_CONSUMED.labels(self.group, topic.name, "handled" if applied else "duplicate").inc()
                    return
                except PoisonEvent as exc:
                    await self._dead_letter(record, topic, exc, attempts=attempt)
                    return
                except TRANSIENT as exc:
                    # The database or a dependency is down: the event is fine, so wait (the
                    # partition stalls, nothing is committed) instead of dead-lettering it.
                    attempt -= 1
                    log.warning("dependency unavailable, waiting: %r", exc, extra={
                        "consumer": self.group, "topic": topic.name, "event_id": event.id, "error": repr(exc),
                        "retry_in_s": outage_backoff})
                    await asyncio.sleep(outage_backoff)
                    outage_backoff = min(outage_backoff * 2, 10.0)
                except Exception as exc:
                    if attempt >= self.max_attempts:
                        await self._dead_letter(record, topic, exc, attempts=attempt)
                        return
                    log.warning("handler failed on %s, retrying: %r", topic.name, exc, extra={
                        "consumer": self.group, "topic": topic.name, "event_id": event.id,
                        "attempt": attempt, "error": repr(exc)})
                    await asyncio.sleep(self.retry_backoff * 2 ** (attempt - 1))

    async def _apply(self, event: Event, handler: Handler) -> bool:
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO processed_events (consumer, event_id, topic) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING", (self.group, event.id, event.topic.name))
            if cur.rowcount == 0:
                return False
            await handler(event, conn)
            return True

    async def _dead_letter(self, record: ConsumerRecord, topic: Topic, error: BaseException, attempts: int) -> None:
        assert self.dlq_producer is not None
        headers = [(k, v) for k, v in record.headers if not k.startswith("dlq_")] + [
            ("dlq_error", f"{type(error).__name__}: {error}"[:4000].encode()),
            ("dlq_consumer", self.group.encode()),
            ("dlq_source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
            ("dlq_attempts", str(attempts).encode()),
        ]
        backoff = 0.5
        while True:  # the offset is committed only once the record is safe in the DLQ
            try:
                await self.dlq_producer.send_and_wait(topic.dlq, value=record.value, key=record.key, headers=headers)
                break
            except KafkaError as exc:
                log.error("dead-letter publish failed, retrying", extra={"topic": topic.dlq, "error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        EVENTS_CONSUMED.labels(self.group, topic.name, "dead_lettered").inc()
        log.error("event dead-lettered to %s: %s", topic.dlq, error, extra={
            "consumer": self.group, "topic": topic.name, "dlq": topic.dlq, "error": str(error),
            "event_id": header_map(record.headers).get("ce_id", ""), "source": f"{record.partition}/{record.offset}"})


def _one_at_a_time(batch: BatchHandler) -> Handler:
    async def handle(event: Event, conn: AsyncConnection) -> None:
        await batch([event], conn)
    return handle


async def wait_assigned(runner: ConsumerRunner, timeout: float = 30.0) -> None:
    """Wait until the runner's consumer has partitions (its group finished joining)."""
    await within(runner.assigned.wait(), timeout)
