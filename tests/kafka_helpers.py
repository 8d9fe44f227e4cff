"""Test helpers to read what landed on a topic, independent of any consumer group, and to wait until a
consumer group has handled everything produced up to a point."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from tests import polling


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


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> end offset (the offset the next record will get) of `topic`, now. Take them right after
    producing: a consumer group that has committed them has handled everything produced until then."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        assert partitions, f"topic {topic} does not exist"
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def consumed_through(bootstrap: str, group: str, topic: str, ends: dict[int, int], *,
                           timeout: float = 60.0) -> dict[int, int]:
    """Wait until consumer group `group` has committed offsets at or past `ends` (see `end_offsets`) on every
    partition of `topic`, and return its committed offsets: the positive barrier for "nothing more happens
    after X". Flywheel's consumers commit only after an event's effect is in their database (ConsumerRunner
    per fetched batch, the monitor's faust agents once a batch's transaction committed), so from then on
    everything produced before `ends` has been applied or dropped as a duplicate.

    Reads the commits the way a restarting member would (OffsetFetch through a consumer of that group that
    never subscribes, so it does not join the group or disturb its members); the admin client's
    list_consumer_group_offsets cannot decode the embedded broker's answer."""
    assert ends, f"no partitions of {topic} to wait for"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        async def committed() -> dict[int, int]:
            return {p: await consumer.committed(TopicPartition(topic, p)) or 0 for p in sorted(ends)}

        async def through() -> dict[int, int] | None:
            offsets = await committed()
            return offsets if all(offsets[p] >= end for p, end in ends.items()) else None

        async def state() -> str:
            return f"committed {await committed()}, end offsets {ends}"
        return await polling.eventually(through, timeout, f"group {group} consumed {topic} through {ends}",
                                        every=0.2, state=state)
    finally:
        await consumer.stop()
