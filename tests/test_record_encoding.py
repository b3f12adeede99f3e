"""The runtime's record encoder (pure): byte for byte what kafka-python's own builder writes."""

from __future__ import annotations

import random

import orjson
import pytest
from kafka.record.memory_records import MemoryRecordsBuilder

from planshift.kafka.fastpath import _append_record

HEADERS = [("event_type", b"upgrade.status"), ("schema_version", b"1")]


def fill(append, seed: int, batch_size: int, records: int = 3000) -> tuple[list, bytes]:
    rnd = random.Random(seed)
    builder = MemoryRecordsBuilder(2, 0, batch_size)
    builder.set_producer_state(7, 1, 0, True)
    sizes = []
    for i in range(records):
        key = None if i % 97 == 0 else f"tenant-{rnd.randrange(10 ** 6)}".encode()
        value = None if i % 89 == 0 else orjson.dumps({"n": i, "pad": "x" * rnd.randrange(0, 20_000)})
        headers = [] if i % 5 == 0 else [("dlq.note", None)] if i % 7 == 0 else HEADERS
        sizes.append(append(builder, 1_700_000_000_000 + rnd.randrange(-5, 2_000_000), key, value, headers))
    builder.close()
    return sizes, bytes(builder.buffer())


def kafka_append(builder, timestamp, key, value, headers):
    appended = builder.append(timestamp, key, value, headers)
    return None if appended is None else appended.size


@pytest.mark.parametrize("batch_size", [16 * 1024, 256 * 1024, 64 * 1024 * 1024])
def test_batches_are_byte_identical_to_kafka_pythons(batch_size):
    expected_sizes, expected = fill(kafka_append, 3, batch_size)
    sizes, got = fill(_append_record, 3, batch_size)
    assert sizes == expected_sizes  # the same records fit, with the same sizes
    assert got == expected


def test_keys_hash_as_kafkas_murmur2():
    from kafka.partitioner.default import murmur2 as kafkas

    from planshift.kafka.partitioning import murmur2

    rnd = random.Random(5)
    keys = [bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 64))) for _ in range(5000)]
    keys += [f"tenant-{i}".encode() for i in range(1000)] + ["ord-ü-€:3".encode()]
    assert [murmur2(k) for k in keys] == [kafkas(k) for k in keys]


def test_an_upgrades_batches_go_round_robin_over_every_partition():
    from planshift.kafka.partitioning import spread

    for upgrade in ("ord-1", "ord-20261117-0042", "ümlaut"):
        placed = [spread(upgrade, n, 12) for n in range(36)]
        assert sorted(placed[:12]) == list(range(12)) and placed[12:] == placed[:12] * 2
        assert placed[1] == (placed[0] + 1) % 12
