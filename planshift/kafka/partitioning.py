"""Where keyed records go: Kafka's partitioner, and how an upgrade's batches are spread.

Pure (no client): the runtime's sends and the handlers that place records use it.
"""

from __future__ import annotations

import struct

_WORDS = [struct.Struct(f"<{n}I") for n in range(64)]  # keys of up to 255 bytes: no format string per call


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's `Utils.murmur2`, as kafka-python's default
    partitioner has it), reading the key's 32-bit words in one unpack."""
    length = len(data)
    m = 0x5BD1E995
    h = 0x9747B28C ^ length
    words = length >> 2
    if words:
        for k in (_WORDS[words] if words < len(_WORDS) else struct.Struct(f"<{words}I")).unpack_from(data):
            k = (k * m) & 0xFFFFFFFF
            k ^= k >> 24
            h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    tail = length & 3
    if tail:
        base = length & ~3
        if tail >= 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def spread(upgrade_id: str, batch_no: int, partitions: int) -> int:
    """The partition of batch `batch_no` of an upgrade: its batches go round-robin over
    every partition, starting at the one its id hashes to. Hashing each batch's key
    instead leaves some partitions with many more batches than others, and the
    migration worker holding those decides how long a large tenant takes."""
    return ((murmur2(upgrade_id.encode()) & 0x7FFFFFFF) + batch_no) % partitions
