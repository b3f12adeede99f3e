"""A broker-free test driver for planshift's consumers (as Kafka Streams' TopologyTestDriver).

`TestDriver` runs a consumer's `ProcessorConfig` on the runtime's own `Engine` — the
same decoding, validity checks, handlers, retries, dead letters, state, changelog and
timers as `StreamProcessor` — but records come from the test and what comes out stays
in memory, in `Topics`: an append-only list of records per topic, with Kafka's
partitioning (murmur2 of the key, or the output's own placement) and its retention (a
replay, a restore or a re-drive finds only what the topic still keeps: `Topics.kept`). Several drivers can
share one `Topics`, so a test can wire intake → migration → settlement and deliver their
records in any order it likes. Time is the driver's clock: `advance()` moves it and fires
the timers that come due.

What needs a broker — transactions, crashes, rebalances, fencing — is tested against a
real one (`tests/`); this driver is for the rules.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from planshift import logs
from planshift.contract import dlq, lifetime_ms
from planshift.events import encode_json, encode_key, event_headers
from planshift.kafka.partitioning import murmur2
from planshift.kafka.topics import planned_topics
from planshift.runtime.engine import Engine, ProcessorConfig, Record
from planshift.runtime.state import PartitionStore, fold_record
from planshift.settings import Settings


class Topics:
    """Every record written in a test, per topic (its name on the cluster, prefix included)."""

    def __init__(self, settings: Settings, clock: Callable[[], float]):
        self.settings = settings
        self.clock = clock
        self.records: dict[str, list[Record]] = defaultdict(list)
        self._partitions = {plan.name: plan.partitions for plan in planned_topics(settings)}

    def partition_count(self, topic: str) -> int:
        if topic.endswith(".changelog"):
            return max(self._partitions.values())
        return self._partitions.get(topic, 1)  # dead-letter topics have one partition

    def append(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
               partition: int | None = None) -> Record:
        if partition is None:
            partition = 0 if key is None else (murmur2(key) & 0x7FFFFFFF) % self.partition_count(topic)
        log = self.records[topic]
        record = Record(topic, partition, len(log), int(self.clock() * 1000), key, value, list(headers))
        log.append(record)
        return record

    def read(self, topic: str) -> list[Record]:
        """Every record ever written to a contract topic (the prefix is added): what a test
        asserts on. `kept` is what a reader would still find there."""
        return list(self.records.get(self.settings.topic(topic), ()))

    def kept(self, name: str) -> list[Record]:
        """The records of topic `name` (on the cluster) not yet past their lifetime, as a
        reader from the start would find them (`planshift.contract.lifetime_ms`)."""
        records = self.records.get(name, [])
        contract = name.removeprefix(self.settings.topic_prefix)
        try:
            lifetime = lifetime_ms(contract)
        except ValueError:  # a changelog, a compacted or a test's own topic
            return list(records)
        oldest = int(self.clock() * 1000) - lifetime
        return [r for r in records if r.timestamp >= oldest]

    def events(self, topic: str) -> list[dict[str, Any]]:
        return [r.event for r in self.read(topic) if r.value is not None]


class Clock:
    """A clock that moves only when told."""

    def __init__(self, start: datetime | None = None):
        self.now = (start or datetime(2026, 11, 17, 9, 30, tzinfo=timezone.utc)).timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    @property
    def moment(self) -> datetime:
        return datetime.fromtimestamp(self.now, timezone.utc)


class _TopicsSink:
    def __init__(self, topics: Topics):
        self.topics = topics

    def send(self, topic, key, value, headers, partition=None) -> None:
        self.topics.append(topic, key, value, headers, partition)

    def partition_count(self, topic: str) -> int:
        return self.topics.partition_count(topic)

    def dead_letter(self, topic, key, value, headers) -> None:
        self.topics.append(topic, key, value, headers, 0)


class TestDriver:
    """One consumer, driven by hand."""

    __test__ = False  # not a pytest test class

    def __init__(self, settings: Settings, config: ProcessorConfig, topics: Topics | None = None,
                 clock: Clock | None = None, tables: dict[str, dict[str, Any]] | None = None):
        self.settings = settings.with_(validate_outputs=True)
        self.config = config
        self.clock = clock or Clock()
        self.topics = topics or Topics(self.settings, self.clock)
        self.engine = Engine(self.settings, config, _TopicsSink(self.topics), self.clock)
        tables = tables if tables is not None else {}
        for topic in config.tables:
            tables.setdefault(topic, {})
        self.engine.table_values = tables
        self._read: dict[str, int] = defaultdict(int)  # per topic: records already handed to this consumer

    # -- input -------------------------------------------------------------------
    def pipe(self, topic: str, value: dict[str, Any] | bytes | None, key: str | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> Record:
        """Write one record to a contract topic (as its producer would) and let this consumer handle it."""
        if key is None and isinstance(value, dict):
            key = value.get("tenant_id")
        raw = value if isinstance(value, (bytes, type(None))) else encode_json(value)
        record = self.topics.append(self.settings.topic(topic), encode_key(key), raw,
                                    headers if headers is not None else event_headers(topic))
        self.handle_pending(topic)
        return record

    def handle_pending(self, topic: str | None = None, limit: int | None = None) -> int:
        """Handle the records of this consumer's source topics not handled yet; how many."""
        handled = 0
        for name, source in self.engine.sources.items():
            if topic is not None and source.topic != topic:
                continue
            log = self.topics.records.get(name, [])
            while self._read[name] < len(log) and (limit is None or handled < limit):
                record = log[self._read[name]]
                self._read[name] += 1
                self.handle(record)
                handled += 1
        return handled

    def handle(self, record: Record) -> None:
        """Handle one record (new or, for a replay, one handled before)."""
        source = self.engine.sources[record.topic]
        event = self.engine.decode(source, record)
        if isinstance(event, dict):
            self.engine.prepare(source, [event])
        try:
            self.engine.process(source, record, event)
        finally:
            logs.hold_record(None)  # as the processor does when a polled batch is done
        self.engine.metrics.records += 1
        for sink in self.engine.config.sinks:  # each record is its own commit here
            sink.flush()
        self.engine.metrics.committed()

    def replay(self, topic: str) -> int:
        """Handle every record of a source topic again, from the start (`planshift replay
        --to-start`): those its retention still keeps."""
        records = self.topics.kept(self.settings.topic(topic))
        for record in records:
            self.handle(record)
        return len(records)

    def set_table(self, topic: str, key: str, value: dict[str, Any] | None) -> None:
        table = self.engine.table_values.setdefault(topic, {})
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value

    # -- time --------------------------------------------------------------------
    def advance(self, seconds: float) -> int:
        """Move the clock on, fire the timers that came due and delete the state that
        expired (as the processor does between polls); how many timers fired."""
        self.clock.advance(seconds)
        now_ms = int(self.clock() * 1000)
        fired = self.engine.fire_timers(now_ms)
        self.engine.expire(now_ms)
        self.engine.metrics.committed()
        return fired

    # -- restart -----------------------------------------------------------------
    def restart(self) -> None:
        """Drop the in-memory state and rebuild it as a restarted instance would: its
        changelog, then the derived state folded from its co-partitioned topics."""
        stores: dict[int, PartitionStore] = {}
        partitions = range(self.topics.partition_count(self.engine.changelog or ""))

        def store(p: int) -> PartitionStore:
            return stores.setdefault(p, PartitionStore(p))

        if self.engine.changelog:
            for record in self.topics.records.get(self.engine.changelog, []):
                store(record.partition).apply_changelog(record)
        for topic, fold in self.config.derived_from:
            apply = fold_record(fold)
            for record in self.topics.kept(self.settings.topic(topic)):
                apply(store(record.partition), record)
        for p in partitions:
            store(p)
        self.engine.replace_stores(stores)

    # -- output ------------------------------------------------------------------
    def read(self, topic: str) -> list[dict[str, Any]]:
        return self.topics.events(topic)

    def dead_letters(self, topic: str) -> list[Record]:
        """The dead letters of a contract topic that its dead-letter topic still keeps."""
        return self.topics.kept(self.settings.topic(dlq(topic)))

    def state(self) -> dict[str, Any]:
        """Every key of every partition store."""
        return {k: v for store in self.engine.stores.values() for k, v in store.items()}


def deliver(drivers: Iterable[TestDriver], order: Callable[[list], list] | None = None, rounds: int = 1000) -> int:
    """Let every driver handle what is waiting for it until nothing is (a pipeline at rest).

    `order` may shuffle the drivers each round (a property test's event orders)."""
    drivers = list(drivers)
    total = 0
    for _ in range(rounds):
        turn = order(drivers) if order else drivers
        handled = sum(d.handle_pending() for d in turn)
        total += handled
        if not handled:
            return total
    raise RuntimeError("the pipeline did not come to rest")
