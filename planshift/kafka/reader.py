"""Reading a topic from the start to its current end, `read_committed`, without a group.

Used by the CLI (`planshift tail`, `planshift status`, the demo) and by tests. The end
is the last stable offset each partition had when reading began, so records of a
transaction that is still open or was aborted are never shown.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterator

from kafka import TopicPartition

from planshift.kafka import clients
from planshift.settings import Settings


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: str | None
    value: Any  # parsed JSON, or the raw bytes when not JSON
    headers: dict[str, bytes]

    @property
    def raw_json(self) -> bool:
        return not isinstance(self.value, (bytes, type(None)))


def _decode(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return value


def read_new(consumer) -> Iterator:
    """The raw records an assigned reader has waiting now, without waiting for more."""
    for records in consumer.poll(timeout_ms=0).values():
        yield from records


class ReadToEnd:
    """Assigned partitions read from the consumer's positions up to the ends they had when
    reading began, a bounded slice at a time. A state restore reads this way: it must not
    hold up its loop, and it moves each partition on to its next topic (`begin`) as soon
    as that partition has `reached` its end. `read_to_end` reads it all at once."""

    def __init__(self, consumer, tps: list[TopicPartition] = ()):
        self.consumer = consumer
        self.end: dict[TopicPartition, int] = {}
        self.remaining: set[TopicPartition] = set()
        self._reached: set[TopicPartition] = set()
        if tps:
            self._take(list(tps))

    def begin(self, tps: list[TopicPartition]) -> None:
        """Read `tps` too, from their beginnings (the reader's consumer is assigned by hand;
        the partitions still being read keep their positions)."""
        self.consumer.assign([*self.remaining, *tps])
        self.consumer.seek_to_beginning(*tps)
        self._take(tps)

    def _take(self, tps: list[TopicPartition]) -> None:
        ends = self.consumer.end_offsets(tps)
        self.end.update(ends)
        for tp in tps:
            (self.remaining if self.consumer.position(tp) < ends[tp] else self._reached).add(tp)

    @property
    def done(self) -> bool:
        return not self.remaining

    def reached(self) -> set[TopicPartition]:
        """The partitions that reached their ends since the last call."""
        reached, self._reached = self._reached, set()
        return reached

    def batches(self, budget_s: float, poll_ms: int = 200,
                max_records: int = 10000) -> Iterator[tuple[TopicPartition, list]]:
        """(partition, records) for at most about `budget_s` seconds, or until the end."""
        deadline = time.monotonic() + budget_s
        consumer = self.consumer
        while self.remaining:
            for tp, records in consumer.poll(timeout_ms=poll_ms, max_records=max_records).items():
                end = self.end[tp]
                yield tp, records if records[-1].offset < end else [r for r in records if r.offset < end]
            # Under read_committed the position jumps over transaction markers and
            # aborted records, so "done" is the position, not the last record seen.
            done = {tp for tp in self.remaining if consumer.position(tp) >= self.end[tp]}
            if done:
                self.remaining -= done
                self._reached |= done
                return  # let the caller move them on
            if time.monotonic() >= deadline:
                return


def read_to_end(consumer, tps: list[TopicPartition], timeout: float, what: str) -> Iterator:
    """The raw records of `tps` from the consumer's positions up to the ends those
    partitions have now (seek first to read from the start); the consumer stays open."""
    reading = ReadToEnd(consumer, tps)
    deadline = time.monotonic() + timeout
    while not reading.done:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {what} did not reach its end within {timeout:.0f}s")
        for _, records in reading.batches(1.0):
            yield from records


def iter_topic(settings: Settings, topic: str, timeout: float = 30.0,
               partitions: list[int] | None = None) -> Iterator[Record]:
    """Every committed record of `topic` up to its end as of now, partition by partition order."""
    for r in iter_raw(settings, topic, timeout, partitions):
        yield Record(r.topic, r.partition, r.offset, r.timestamp,
                     r.key.decode() if r.key is not None else None, _decode(r.value), dict(r.headers or []))


def iter_raw(settings: Settings, topic: str, timeout: float = 30.0,
             partitions: list[int] | None = None) -> Iterator:
    """`iter_topic`'s records as kafka-python gives them: key and value as bytes."""
    consumer = clients.consumer(settings, None, enable_auto_commit=False)
    try:
        available = consumer.partitions_for_topic(topic)
        if available is None:
            deadline = time.monotonic() + min(timeout, 10)
            while available is None and time.monotonic() < deadline:
                consumer.topics()  # refresh metadata
                available = consumer.partitions_for_topic(topic)
        if not available:
            raise LookupError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(available) if partitions is None or p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        yield from read_to_end(consumer, tps, timeout, topic)
    finally:
        consumer.close()


def read_topic(settings: Settings, topic: str, timeout: float = 30.0) -> list[Record]:
    return list(iter_topic(settings, topic, timeout))


def read_values(settings: Settings, topic: str, timeout: float = 30.0) -> list[Any]:
    return [r.value for r in iter_topic(settings, topic, timeout)]


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Each partition's last stable offset (read_committed): where a reader is caught up."""
    consumer = clients.consumer(settings, None)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()} if tps else {}
    finally:
        consumer.close()


def stable_end_offsets(settings: Settings, topic: str) -> int:
    """Sum over partitions of the last stable offset: cheap progress without reading records."""
    return sum(end_offsets(settings, topic).values())
