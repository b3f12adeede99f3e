"""Per-partition state stores backed by compacted changelog topics.

Each input partition of a stateful consumer owns one `PartitionStore`: an in-memory
dict whose every change is also written, inside the same Kafka transaction as the
outputs and offsets, to partition *p* of the consumer's changelog topic (compacted,
keyed by the state key, a null value deleting it). On assignment the store is rebuilt
by reading that changelog partition `read_committed` from the start to its end, so
the state always matches the last committed offsets: an aborted transaction's state
changes are never read back.

State that a consumer can derive from a co-partitioned topic it writes anyway (intake
derives each tenant's upgrades from `upgrade.status`) is not logged a second time:
after the changelog, the committed events of that topic's partition p are folded into
store p, as Kafka Streams does when it reuses a source topic as a table's changelog.
Those events are committed in the same transactions as the offsets, so the derived
state matches the committed offsets just as logged state does.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

from kafka import TopicPartition

from planshift.kafka import clients
from planshift.kafka.reader import read_to_end
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


def restore(settings: Settings, topic: str, partitions: list[int], timeout: float = 120.0,
            derived_from: list[tuple[str, Callable[[PartitionStore, dict[str, Any]], None]]] = ()
            ) -> dict[int, PartitionStore]:
    """Rebuild the stores of `partitions` from their changelog partitions, then fold in
    the committed events of the topics their derived state comes from."""
    stores = {p: PartitionStore(p) for p in partitions}
    if not partitions:
        return stores

    def apply_changelog(store: PartitionStore, record) -> None:
        store.apply(record.key.decode(), None if record.value is None else json.loads(record.value))

    _read_partitions(settings, topic, stores, apply_changelog, timeout)
    for source, fold in derived_from:
        def apply_event(store: PartitionStore, record, fold=fold) -> None:
            try:
                value = json.loads(record.value) if record.value is not None else None
            except (UnicodeDecodeError, json.JSONDecodeError):
                return  # not an event: nothing to derive
            if isinstance(value, dict):
                fold(store, value)

        _read_partitions(settings, source, stores, apply_event, timeout)
    return stores


def _read_partitions(settings: Settings, topic: str, stores: dict[int, PartitionStore],
                     apply: Callable[[PartitionStore, Any], None], timeout: float) -> None:
    consumer = clients.consumer(settings, None)
    try:
        tps = [TopicPartition(topic, p) for p in stores]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        for record in read_to_end(consumer, tps, timeout, f"state from {topic}"):
            apply(stores[record.partition], record)
    finally:
        consumer.close()
