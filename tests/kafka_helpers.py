"""Test helpers to read what landed on a topic, independent of any consumer group."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition


async def read_records(bootstrap: str, topic: str, *, until: Callable[[list[ConsumerRecord]], bool],
                       timeout: float = 30.0, settle: float = 0.0) -> list[ConsumerRecord]:
    """Read `topic` from the beginning until `until(records)` holds (then `settle` more seconds,
    to catch duplicates) or `timeout` passes; returns every record read."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        assigned: set[TopicPartition] = set()
        settle_deadline: float | None = None
        while loop.time() < deadline:
            partitions = consumer.partitions_for_topic(topic) or set()
            if partitions and len(partitions) != len(assigned):
                assigned = {TopicPartition(topic, p) for p in partitions}
                consumer.assign(list(assigned))
                await consumer.seek_to_beginning(*assigned)
            elif not partitions:
                await consumer._client.force_metadata_update()  # topic may not exist yet
                await asyncio.sleep(0.2)
                continue
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
            if settle_deadline is None and until(records):
                settle_deadline = loop.time() + settle
            if settle_deadline is not None and loop.time() >= settle_deadline:
                break
        return records
    finally:
        await consumer.stop()


def header(record: ConsumerRecord, name: str) -> str:
    return dict(record.headers).get(name, b"").decode()
