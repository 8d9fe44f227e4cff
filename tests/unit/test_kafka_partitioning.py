"""The batched producer path picks partitions exactly as aiokafka's (and the Java client's) default
partitioner does, so keys keep their partition whichever path sent them (co-partitioned topics rely on it)."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from flywheel.common.kafka import murmur2, partition_of


def test_murmur2_matches_aiokafka_for_every_length() -> None:
    rng = random.Random(7)
    for length in range(0, 70):
        for _ in range(20):
            data = rng.randbytes(length)
            assert murmur2(data) == aiokafka_murmur2(data), data


def test_partition_of_matches_the_default_partitioner() -> None:
    rng = random.Random(11)
    partitions = [0, 1, 2, 3, 4, 5]
    for _ in range(500):
        key = f"{rng.getrandbits(128):032x}".encode()
        assert partition_of(key, partitions) == DefaultPartitioner()(key, partitions, partitions)
