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

**Restoring without leaving the loop.** A `Restoration` rebuilds the stores of some
partitions a slice at a time: the processor pauses those partitions, calls `step()`
between its polls (each call bounded), and resumes them when the stores are whole, as
Quix Streams' recovery does. The loop keeps polling all the while, so a restore of
millions of keys never holds the consumer past `max.poll.interval.ms` nor keeps its
other partitions waiting.

**Expiry.** State that can never be needed again is deleted when its time comes:
`ctx.put(key, value, expires_at=…)` keeps the moment with the key (in memory, and on
its changelog record as the header `planshift-expires`, so a restore knows it too);
the processor deletes expired keys between polls, writing their tombstones in a
transaction, so a consumer that runs for months keeps a flat memory. Derived state can
expire too, in memory only: its fold gives it the same moment at restore, which must not
come before its source records leave their topic (else a restart would bring it back).
"""

from __future__ import annotations

import heapq
import time
from typing import Any, Callable, Iterator

import orjson
from kafka import TopicPartition

from planshift.kafka import clients
from planshift.kafka.reader import ReadToEnd
from planshift.logs import get_logger
from planshift.settings import Settings

log = get_logger(__name__)

EXPIRES_HEADER = "planshift-expires"  # changelog header: ms since the epoch after which the key goes


def changelog_topic(settings: Settings, group_id: str, store: str = "state") -> str:
    return settings.topic(f"{group_id}.{store}.changelog")


class PartitionStore:
    def __init__(self, partition: int):
        self.partition = partition
        self._data: dict[str, Any] = {}
        self._expires: dict[str, int] = {}  # key → ms since the epoch
        self._due: list[tuple[int, str]] = []  # heap of (expires, key); entries may be stale
        self._derived: set[str] = set()  # expiring keys that are derived, not logged (no tombstone)

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def apply(self, key: str, value: Any, expires_at: int | None = None, logged: bool = True) -> None:
        if value is None:
            self._data.pop(key, None)
            if self._expires.pop(key, None) is not None:
                self._derived.discard(key)
            return
        self._data[key] = value
        if expires_at is None:
            if self._expires.pop(key, None) is not None:
                self._derived.discard(key)
            return
        if logged:
            self._derived.discard(key)
        else:
            self._derived.add(key)
        if self._expires.get(key) != expires_at:
            self._expires[key] = expires_at
            heapq.heappush(self._due, (expires_at, key))
            if len(self._due) > 2 * len(self._expires) + 1024:  # rewritten often: drop stale entries
                self._due = [(at, k) for k, at in self._expires.items()]
                heapq.heapify(self._due)

    def apply_changelog(self, record) -> None:
        """Take in one changelog record (its expiry travels in a header)."""
        expires = None
        for name, value in record.headers or ():
            if name == EXPIRES_HEADER:
                expires = int(value)
        self.apply(record.key.decode(), None if record.value is None else orjson.loads(record.value), expires)

    def next_expiry(self) -> int | None:
        while self._due and self._expires.get(self._due[0][1]) != self._due[0][0]:
            heapq.heappop(self._due)  # stale: the key was deleted or rewritten since
        return self._due[0][0] if self._due else None

    def expired(self, now_ms: int, limit: int | None = None) -> list[str]:
        """The keys whose time has come, at most `limit` (still in the store: the caller
        deletes them)."""
        keys = []
        while (limit is None or len(keys) < limit) and (at := self.next_expiry()) is not None and at <= now_ms:
            keys.append(heapq.heappop(self._due)[1])
        return keys

    def expires_at(self, key: str) -> int | None:
        return self._expires.get(key)

    def is_derived(self, key: str) -> bool:
        """An expiring key rebuilt from a source topic at restore: it goes without a tombstone."""
        return key in self._derived

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self._data.items())

    def __len__(self) -> int:
        return len(self._data)


def fold_record(fold: Callable[[PartitionStore, dict[str, Any]], None]) -> Callable[[PartitionStore, Any], None]:
    """A derived-state fold as a record's: records that are not events are skipped."""
    def apply_event(store: PartitionStore, record) -> None:
        try:
            value = orjson.loads(record.value) if record.value is not None else None
        except orjson.JSONDecodeError:
            return  # not an event: nothing to derive
        if isinstance(value, dict):
            fold(store, value)
    return apply_event


class Restoration:
    """The stores of `partitions`, rebuilt a bounded slice at a time on one reader: each
    partition reads its changelog partition, then the same partition of each derived
    topic (each `read_committed` from its start to the end it had when its reading
    began), and is whole — handed over by `take_whole` — as soon as its own reads are
    done, whatever the other partitions' sizes."""

    def __init__(self, settings: Settings, changelog: str, partitions: set[int],
                 derived_from: list[tuple[str, Callable[[PartitionStore, dict[str, Any]], None]]] = ()):
        self.settings = settings
        self.partitions = set(partitions)
        self._steps: list[tuple[str, Callable[[PartitionStore, Any], None]]] = [
            (changelog, PartitionStore.apply_changelog),
            *((topic, fold_record(fold)) for topic, fold in derived_from)]
        self._apply = dict(self._steps)
        self._consumer = None
        self._reading: ReadToEnd | None = None
        self.began = time.monotonic()
        self.restart()

    def restart(self, partitions: set[int] | None = None) -> None:
        """Begin again from nothing (after the broker failed a read half-way), for
        `partitions` (default: all of them)."""
        self.close()
        if partitions is not None:
            self.partitions = set(partitions)
        self.stores = {p: PartitionStore(p) for p in sorted(self.partitions)}
        self._stage = dict.fromkeys(self.partitions, 0)  # partition → index of the step it reads
        self._whole: set[int] = set()
        self._whole_new: set[int] = set()
        self.records = 0
        self._progressed = time.monotonic()
        self._warned = False

    @property
    def done(self) -> bool:
        return len(self._whole) == len(self.partitions)

    def take_whole(self) -> set[int]:
        """The partitions whose stores became whole since the last call."""
        whole, self._whole_new = self._whole_new, set()
        return whole

    def step(self, budget_s: float) -> bool:
        """Read for at most about `budget_s` seconds; True once every store is whole."""
        deadline = time.monotonic() + budget_s
        if self._reading is None:
            self._consumer = clients.consumer(self.settings, None)
            self._reading = ReadToEnd(self._consumer)
            self._reading.begin([TopicPartition(self._steps[0][0], p) for p in sorted(self.partitions)])
        stores, apply, reading = self.stores, self._apply, self._reading
        while True:
            for tp, records in reading.batches(max(deadline - time.monotonic(), 0), poll_ms=50,
                                               max_records=20000):
                store, take = stores[tp.partition], apply[tp.topic]
                for r in records:
                    take(store, r)
                self.records += len(records)
                self._progressed = time.monotonic()
            moving_on = []
            for tp in reading.reached():
                stage = self._stage[tp.partition] = self._stage[tp.partition] + 1
                if stage < len(self._steps):
                    moving_on.append(TopicPartition(self._steps[stage][0], tp.partition))
                else:
                    self._whole.add(tp.partition)
                    self._whole_new.add(tp.partition)
            if moving_on:
                reading.begin(moving_on)
            if self.done:
                self.close()
                return True
            if time.monotonic() >= deadline:
                self._warn_if_stuck()
                return False

    def _warn_if_stuck(self) -> None:
        if not self._warned and time.monotonic() - self._progressed > 60:
            self._warned = True
            log.warning("state restore has made no progress for a minute; its partitions stay paused",
                        partitions=sorted(self.partitions - self._whole))

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        self._consumer = self._reading = None
