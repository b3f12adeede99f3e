"""The broker-free half of the runtime: a record in; outputs, state, timers and dead letters out.

`StreamProcessor` feeds the engine the records it polls and hands it a sink that writes
into the open Kafka transaction; `planshift.runtime.testing.TestDriver` feeds it records
by hand and keeps what comes out in memory. Both run the same code for everything a
consumer's rules decide — decoding, validity checks, handlers, retries, dead letters,
state and its changelog, wall-clock timers — so those rules are tested in milliseconds
without a broker, and the broker tests keep what needs one (transactions, crashes,
rebalances).

Timers (Kafka Streams calls them punctuations) are state: `ctx.schedule(name, due_ms)`
writes the key `timer:{name}` to the partition's store, in the same transaction as the
handler's outputs, so a timer survives restarts and rebalances with its partition. When
the clock passes `due_ms`, the processor's `on_timer` handler runs on a context of that
partition and the timer is deleted in the same transaction as what the handler emits:
it fires once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol

from planshift import logs
from planshift.contract import dlq
from planshift.errors import PermanentError
from planshift.events import encode_json, encode_key, event_headers
from planshift.logs import get_logger
from planshift.runtime.context import TIMER_PREFIX, Context
from planshift.runtime.deadletters import dead_letter_headers
from planshift.runtime.metrics import TALLIED, Metrics, tally_output
from planshift.runtime.state import EXPIRES_HEADER, PartitionStore, changelog_topic
from planshift.schema import InvalidEvent, parse, parse_json, schema_names, validate
from planshift.settings import Settings

log = get_logger(__name__)

RAW = "(raw)"  # Source.schema of a source whose handler takes the record's bytes as they are
TIMER_TOPIC = "(timer)"  # Context.topic of a timer's handler


@dataclass(frozen=True)
class Source:
    """An input topic: its schema and its handler."""

    topic: str  # contract name
    handle: Callable[[Context, dict[str, Any]], None]
    # Schema name; default: the topic name; "" for JSON without a schema; RAW: the value's
    # bytes, undecoded (the dead-letter re-drive).
    schema: str | None = None
    # Rules beyond the schema (CONTRACT.md §3 r2: real dates, a new target, …): raises
    # InvalidEvent for an event that matches its schema but is impossible. Such an event
    # takes the invalid path: `on_invalid`, then its dead-letter topic.
    check: Callable[[dict[str, Any]], None] | None = None
    # Called, in the same transaction as the dead letter, for a record that breaks its
    # schema, so a consumer can tell the sender (intake emits `rejected`).
    on_invalid: Callable[[Context, bytes | None, InvalidEvent], None] | None = None
    # Called with the valid events of each polled batch before any is handled, so a
    # consumer can fetch what they need in one round trip instead of one per record.
    prepare: Callable[[list[dict[str, Any]]], None] | None = None
    # Called, in the same transaction as the dead letter, when a valid record fails
    # every attempt, so a consumer can report the failure (migration marks it `failed`).
    on_failure: Callable[[Context, dict[str, Any], BaseException], None] | None = None
    # Whether a valid record's work, started by `prepare`, is done: a record that is not
    # ready holds its partition (paused; it and the records read after it wait in memory,
    # in order, and are not prepared again), so that the records of other partitions are
    # handled and commit without waiting for it.
    ready: Callable[[dict[str, Any]], bool] | None = None


@dataclass(frozen=True)
class ProcessorConfig:
    group_id: str
    sources: tuple[Source, ...]
    stateful: bool = True
    tables: tuple[str, ...] = ()  # contract topics read whole by every instance (compacted)
    # State derived from a co-partitioned topic instead of logged: at restore, after the
    # changelog, every committed event of partition p of these topics is folded into
    # store p. Writes of such state use `ctx.put(..., logged=False)`.
    derived_from: tuple[tuple[str, Callable[[PartitionStore, dict[str, Any]], None]], ...] = ()
    # Runs when a timer set with `ctx.schedule(name, due_ms, data)` comes due: (ctx, name, data).
    on_timer: Callable[[Context, str, dict[str, Any]], None] | None = None
    commit_every: int = 5000
    commit_interval_ms: int | None = None  # None: PLANSHIFT_COMMIT_INTERVAL_MS, else the runtime's default
    max_attempts: int = 3
    retry_backoff_s: float = 0.05
    instance: str = "0"  # stable per instance: a restart fences its own zombie at once
    max_poll_records: int = 2000
    # How long the broker may hold a fetch that finds nothing new (kafka-python's default):
    # lower where a record is waited for as soon as it is committed (a chained batch).
    fetch_max_wait_ms: int = 500
    transaction_timeout_ms: int = 60_000
    session_timeout_ms: int = 15_000  # an instance that is gone for good loses its partitions after this
    poll_timeout_ms: int = 500  # returns at once when records wait; bounds how soon stop() is seen
    timer_interval_ms: int = 1000  # how often the processor looks for due timers
    # The longest a call to the broker may take (committing, aborting, closing) before its
    # producer is replaced and the partitions reset (`checkpoint.py`).
    call_timeout_ms: int = 30_000
    # A loop that has not come round for this long is stalled (`StreamProcessor.exit_if_stalled`).
    stall_timeout_ms: int = 300_000
    # Sinks outside Kafka (`planshift/runtime/sinks.py`), flushed at every commit.
    sinks: tuple[Any, ...] = ()
    # Commit as soon as a poll returns nothing. Off for a consumer that writes files (the
    # archiver): it commits every `commit_every` records or `commit_interval_ms`, so a
    # trickle of records does not make a file each.
    commit_when_idle: bool = True
    # The consumer's own gauges for /metrics, measured by the loop every few seconds:
    # (engine, now_ms) → {(name, label): value} (intake: upgrades in flight and the oldest).
    gauges: Callable[[Any, int], dict[tuple[str, str], float]] | None = None


class Sink(Protocol):
    """Where the engine's records go: the open Kafka transaction, or a test's memory."""

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
             partition: int | None = None) -> None: ...

    def partition_count(self, topic: str) -> int: ...

    def dead_letter(self, topic: str, key: bytes | None, value: bytes | None,
                    headers: list[tuple[str, bytes]]) -> None: ...


class Record(NamedTuple):
    """A record as the engine reads it: the fields of kafka-python's ConsumerRecord it uses.
    A timer's handler sees one too (topic `TIMER_TOPIC`, offset -1), and the test driver's
    records are these."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list

    @property
    def event(self) -> dict[str, Any] | None:
        return None if self.value is None else json.loads(self.value)

    def header(self, name: str) -> str | None:
        return next((v.decode() for k, v in self.headers if k == name), None)


class Engine:
    def __init__(self, settings: Settings, config: ProcessorConfig, sink: Sink,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.config = config
        self.sink = sink
        self.clock = clock
        self.metrics = Metrics()
        self.sources = {settings.topic(s.topic): s for s in config.sources}
        self.stores: dict[int, PartitionStore] = {}
        self.table_values: dict[str, Any] = {}  # each table's current values, as of the last poll
        self.changelog = changelog_topic(settings, config.group_id) if config.stateful else None
        self.group = settings.topic(config.group_id)
        self._timers: dict[int, dict[str, int]] = {}  # partition → timer key → due (ms since the epoch)
        self._topic_names: dict[str, str] = {}  # contract topic → its name on the cluster (prefixed)
        self._schemas = frozenset(schema_names())

    # -- records -----------------------------------------------------------------
    @staticmethod
    def decode(source: Source, record) -> dict[str, Any] | bytes | InvalidEvent:
        if source.schema == RAW:
            return record.value
        try:
            if source.schema == "":
                event = parse_json(record.value)
            else:
                event = parse(source.schema or source.topic, record.value)
            if source.check is not None:
                source.check(event)
            return event
        except InvalidEvent as exc:
            return exc

    @staticmethod
    def prepare(source: Source, events: list[dict[str, Any]]) -> None:
        if source.prepare is None or not events:
            return
        try:
            source.prepare(events)
        except Exception:  # noqa: BLE001 - an optimisation only: handlers still read for themselves
            log.exception("prepare failed; handling without it")

    def process(self, source: Source, record, event: dict[str, Any] | InvalidEvent) -> None:
        """Handle one decoded record: its handler's outputs and state, or its dead letter."""
        headers = dict(record.headers or [])
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        # Every log line written while this record is handled carries where it came from
        # and, once known, whose it is.
        logs.hold_record(record, event)
        if isinstance(event, InvalidEvent):
            ctx = self._context(source.topic, record, key, headers)
            if source.on_invalid is not None:
                try:
                    source.on_invalid(ctx, record.value, event)
                except Exception:  # noqa: BLE001 - the dead letter matters more than the notice
                    log.exception("on_invalid failed")
                    ctx = self._context(source.topic, record, key, headers)
            self.apply(ctx)
            log.warning("invalid record dead-lettered", error="; ".join(map(str, event.violations))[:1000])
            self.dead_letter(record, event, attempts=1)
            return
        for attempt in range(1, self.config.max_attempts + 1):
            ctx = self._context(source.topic, record, key, headers)
            try:
                source.handle(ctx, event)
                if self.settings.validate_outputs:
                    self._validate(ctx)
                self.apply(ctx)
                return
            except Exception as exc:  # noqa: BLE001 - bounded retries, then a dead letter
                # A permanent error (a request no retry can make possible) is not retried.
                if attempt == self.config.max_attempts or isinstance(exc, PermanentError):
                    log.error("record failed; dead-lettered", attempts=attempt, error=repr(exc))
                    if source.on_failure is not None:
                        notice = self._context(source.topic, record, key, headers)
                        try:
                            source.on_failure(notice, event, exc)
                            self.apply(notice)
                        except Exception:  # noqa: BLE001 - the dead letter matters more than the notice
                            log.exception("on_failure failed")
                    self.dead_letter(record, exc, attempts=attempt)
                    return
                self.metrics.retries += 1
                log.warning("record failed; retrying", attempt=attempt, error=repr(exc))
                time.sleep(self.config.retry_backoff_s * attempt)

    def _context(self, topic: str, record, key: str | None, headers) -> Context:
        return Context(
            topic=topic, partition=record.partition, offset=record.offset, timestamp=record.timestamp,
            key=key, headers=headers, store=self.stores.get(record.partition),
            tables=self.table_values, clock=self.clock, value=record.value,
        )

    def _validate(self, ctx: Context) -> None:
        for output in ctx.outputs:
            if output.event_type in self._schemas:
                validate(output.event_type, output.value)

    def apply(self, ctx: Context) -> None:
        """Send a handled record's outputs and state changes (to the store and its changelog)."""
        sink = self.sink
        for output in ctx.outputs:
            if output.topic in TALLIED:
                tally_output(self.metrics.pending, output.topic, output.value)
            topic = self._topic_names.get(output.topic)
            if topic is None:
                topic = self._topic_names[output.topic] = self.settings.topic(output.topic)
            partition = None if output.placement is None else output.placement(sink.partition_count(topic))
            sink.send(topic, encode_key(output.key), encode_json(output.value),
                      event_headers(output.event_type), partition)
        for topic, key, value, headers in ctx.forwards:
            sink.send(topic, key, value, headers)
        if ctx.writes:
            if self.changelog is None:
                raise RuntimeError(f"{self.config.group_id} is stateless but its handler wrote state")
            store = self.stores.get(ctx.partition)
            if store is None:
                store = self.stores[ctx.partition] = PartitionStore(ctx.partition)
            for key, value, logged, expires_at in ctx.pending_writes():
                store.apply(key, value, expires_at, logged)
                if key.startswith(TIMER_PREFIX):
                    self._index_timer(ctx.partition, key, value)
                if not logged:
                    continue
                headers = [] if expires_at is None else [(EXPIRES_HEADER, str(expires_at).encode())]
                sink.send(self.changelog, key.encode(),
                          None if value is None else encode_json(value), headers, ctx.partition)

    def dead_letter(self, record, exc: BaseException, attempts: int) -> None:
        headers = dead_letter_headers(record, self.group, exc, attempts)
        source = self.sources.get(record.topic)
        source_topic = source.topic if source is not None else record.topic
        self.sink.dead_letter(self.settings.topic(dlq(source_topic)), record.key, record.value, headers)
        self.metrics.count_dead_letter(source_topic)

    # -- stores ------------------------------------------------------------------
    def adopt_stores(self, restored: dict[int, PartitionStore]) -> None:
        """Take restored stores in (replacing any of the same partitions) and index their timers."""
        self.stores.update(restored)
        for partition, store in restored.items():
            self._timers[partition] = {key: value["due"] for key, value in store.items()
                                       if key.startswith(TIMER_PREFIX)}

    def replace_stores(self, stores: dict[int, PartitionStore]) -> None:
        """Every store replaced (a restart): what was in memory is gone."""
        self.stores.clear()
        self._timers.clear()
        self.adopt_stores(stores)

    def drop_store(self, partition: int) -> None:
        self.stores.pop(partition, None)
        self._timers.pop(partition, None)

    # -- expiry ------------------------------------------------------------------
    def expiry_due(self, now_ms: int) -> bool:
        return any((at := store.next_expiry()) is not None and at <= now_ms for store in self.stores.values())

    def expire(self, now_ms: int, limit: int | None = None) -> int:
        """Delete the keys whose expiry has passed (at most `limit`), each logged one with its
        changelog tombstone. Returns how many."""
        expired = 0
        for partition, store in self.stores.items():
            keys = store.expired(now_ms, None if limit is None else limit - expired)
            for key in keys:
                derived = store.is_derived(key)
                store.apply(key, None)
                if not derived:
                    self.sink.send(self.changelog, key.encode(), None, [], partition)
            expired += len(keys)
            if limit is not None and expired >= limit:
                break
        self.metrics.expired_keys += expired
        return expired

    # -- timers ------------------------------------------------------------------
    def _index_timer(self, partition: int, key: str, value: Any) -> None:
        timers = self._timers.setdefault(partition, {})
        if value is None:
            timers.pop(key, None)
        else:
            timers[key] = value["due"]

    def timers_due(self, now_ms: int) -> bool:
        return any(due <= now_ms for timers in self._timers.values() for due in timers.values())

    def fire_timers(self, now_ms: int) -> int:
        """Run the handler of every timer due at `now_ms`; each fires once. Returns how many fired."""
        handler = self.config.on_timer
        fired = 0
        for partition, timers in list(self._timers.items()):
            due = sorted((at, key) for key, at in timers.items() if at <= now_ms)
            for at, key in due:
                store = self.stores.get(partition)
                timer = store.get(key) if store is not None else None
                if timer is None:
                    timers.pop(key, None)
                    continue
                name = key[len(TIMER_PREFIX):]
                record = Record(TIMER_TOPIC, partition, -1, now_ms, name.encode(), None, [])
                logs.hold_record(record, timer.get("data"))
                for attempt in range(1, self.config.max_attempts + 1):
                    ctx = self._context(TIMER_TOPIC, record, name, {})
                    try:
                        if handler is not None:
                            handler(ctx, name, timer.get("data") or {})
                        ctx.delete(key)
                        if self.settings.validate_outputs:
                            self._validate(ctx)
                        self.apply(ctx)
                        break
                    except Exception as exc:  # noqa: BLE001 - a timer fires once, even when it fails
                        if attempt == self.config.max_attempts or isinstance(exc, PermanentError):
                            log.error("timer failed; dropped", timer=name, attempts=attempt, error=repr(exc))
                            dropped = self._context(TIMER_TOPIC, record, name, {})
                            dropped.delete(key)
                            self.apply(dropped)
                            break
                        log.warning("timer failed; retrying", timer=name, attempt=attempt, error=repr(exc))
                        time.sleep(self.config.retry_backoff_s * attempt)
                fired += 1
        logs.hold_record(None)
        self.metrics.timers_fired += fired
        return fired
