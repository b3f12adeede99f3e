"""Per-partition state stores backed by compacted changelog topics.

Each input partition of a stateful consumer owns one `PartitionStore`: an in-memory
dict whose every change is also written, inside the same Kafka transaction as the
outputs and offsets, to partition *p* of the consumer's changelog topic (compacted,
keyed by the state key, a null value deleting it). On assignment the store is rebuilt
by reading that changelog partition `read_committed` from the start to its end, so
the state always matches the last committed offsets: an aborted transaction's state
changes are never read back.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from kafka import TopicPartition

from planshift import kafka_clients
from planshift.settings import Settings


def changelog_topic(settings: Settings, group_id: str, store: str = "state") -> str:
    return settings.topic(f"{group_id}.{store}.changelog")


class PartitionStore:
    def __init__(self, partition: int):
        self.partition = partition
        self._data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def apply(self, key: str, value: Any) -> None:
        if value is None:
            self._data.pop(key, None)
        else:
            self._data[key] = value

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self._data.items())

    def __len__(self) -> int:
        return len(self._data)


def restore(settings: Settings, topic: str, partitions: list[int], timeout: float = 120.0) -> dict[int, PartitionStore]:
    """Rebuild the stores of `partitions` from their changelog partitions."""
    stores = {p: PartitionStore(p) for p in partitions}
    if not partitions:
        return stores
    consumer = kafka_clients.consumer(settings, None)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        remaining = {tp for tp in tps if consumer.position(tp) < end[tp]}
        import time

        deadline = time.monotonic() + timeout
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"restoring state from {topic} did not finish within {timeout:.0f}s")
            for tp, records in consumer.poll(timeout_ms=200, max_records=10000).items():
                store = stores[tp.partition]
                for r in records:
                    if r.offset < end[tp]:
                        store.apply(r.key.decode(), None if r.value is None else json.loads(r.value))
            remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
    finally:
        consumer.close()
    return stores
