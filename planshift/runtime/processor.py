"""The consume → handle → produce loop, written once, with exactly-once output.

Commit protocol
---------------
Work is grouped into transactions of at most `commit_every` records or
`commit_interval_ms` milliseconds, whichever comes first:

1. `begin_transaction()` before the first record of the interval is handled.
2. Per record, the handler runs on a `Context` and returns. Only then are its output
   events sent (straight into the producer's open batches: `kafka_clients.TransactionalSends`)
   and its state writes applied to the in-memory store *and* sent to the store's
   changelog partition. A record whose handler keeps failing is sent to
   `<topic>.dlq` instead, with the headers of CONTRACT.md §7. Everything sent is part
   of the open transaction, invisible to `read_committed` readers.
3. `send_offsets_to_transaction(offsets, consumer.group_metadata())`: the next offsets
   of every handled partition join the transaction, so they commit if and only if
   the outputs and state changes do. The group metadata (generation and member id)
   lets the group coordinator refuse a zombie that lost its partitions in a rebalance
   it did not see (KIP-447); a transactional id alone could not.
4. `commit_transaction()`: flushes every pending send, then commits atomically.

If any step fails, the transaction is aborted and every assigned partition is reset
to its committed offset, with its store rebuilt from the changelog, so the in-memory
state again matches what Kafka holds. A fenced producer cannot even abort: it is
closed and replaced, and the same reset follows.

Why in this order: outputs and state are sent before the offsets so that a crash
anywhere before step 4 leaves an open transaction that the broker aborts (or that
the next producer with the same transactional id aborts at `init_transactions`), and
the records are handled again from the committed offsets with the committed state.
Nothing is visible until step 4, and after step 4 everything is.

Rebalances: before partitions are revoked the open transaction is committed (bounded
by the producer's timeouts; on failure it is aborted), then their stores are dropped.
Newly assigned partitions have their stores restored before any of their records is
handled. SIGTERM and SIGINT finish the record in hand, commit, and leave the group.
"""

from __future__ import annotations

import dataclasses
import gc
import signal
import threading
import time
from typing import Callable

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    InvalidProducerEpochError,
    KafkaError,
    ProducerFencedError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kafka.structs import OffsetAndMetadata

from planshift import kafka_clients, logs
from planshift.logs import get_logger
from planshift.runtime.assignor import CopartitionedCooperativeStickyAssignor
from planshift.runtime.engine import SKIP, Engine, ProcessorConfig, Source
from planshift.runtime.state import restore
from planshift.runtime.tables import GlobalTable
from planshift.settings import Settings

__all__ = ["ProcessorConfig", "Source", "StreamProcessor"]

log = get_logger(__name__)

# Under load a transaction commits after this long unless the consumer or
# PLANSHIFT_COMMIT_INTERVAL_MS says otherwise (an idle consumer commits at once).
DEFAULT_COMMIT_INTERVAL_MS = 200

FENCED = (ProducerFencedError, InvalidProducerEpochError)
LOST_GENERATION = (CommitFailedError, IllegalGenerationError, UnknownMemberIdError, RebalanceInProgressError)


class Stoppable:
    """A long-running loop that SIGTERM or Ctrl-C asks to finish what it holds and stop."""

    _stop: threading.Event

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())


class StreamProcessor(Stoppable):
    def __init__(self, settings: Settings, config: ProcessorConfig, clock: Callable[[], float] = time.time):
        self.settings = settings
        if config.commit_interval_ms is None:
            config = dataclasses.replace(config, commit_interval_ms=settings.commit_interval_ms
                                         or DEFAULT_COMMIT_INTERVAL_MS)
        self.config = config
        # Everything a record's rules decide happens in the engine; this class is the Kafka half.
        self._sink = _KafkaSink()
        self.engine = Engine(settings, config, self._sink, clock)
        self.metrics = self.engine.metrics
        self._sources = self.engine.sources
        self._offsets: dict[TopicPartition, int] = {}
        self._in_txn = False
        self._txn_records = 0
        self._txn_started = 0.0
        self._timers_checked = 0.0
        self._stop = threading.Event()
        self._tables: dict[str, GlobalTable] = {}
        self._changelog = self.engine.changelog
        self.transactional_id = f"{settings.topic_prefix}{config.group_id}-{config.instance}"
        self.consumer = None
        self.producer = None
        self._sends: kafka_clients.TransactionalSends | None = None

    # -- lifecycle ---------------------------------------------------------------
    def run(self, until: Callable[["StreamProcessor"], bool] | None = None) -> None:
        """Process until stopped (or until `until(self)` is true, for tests and benchmarks)."""
        self._start()
        try:
            while not self._stop.is_set():
                self._refresh_tables()
                self._poll_once()
                self._fire_timers()
                if until is not None and until(self) and not self._in_txn:
                    break
        finally:
            self._shutdown()

    def _start(self) -> None:
        _collect_less_often()
        if self._changelog:
            self._ensure_changelog()
        for topic in self.config.tables:
            table = GlobalTable(self.settings, self.settings.topic(topic))
            table.bootstrap()
            self._tables[topic] = table
        self.producer = self._new_producer()
        self.consumer = kafka_clients.consumer(
            self.settings, self.settings.topic(self.config.group_id),
            partition_assignment_strategy=[CopartitionedCooperativeStickyAssignor],
            max_poll_records=self.config.max_poll_records,
            # Static membership (KIP-345) under the same stable name as the transactional
            # id: a restarted instance takes its own place in the group at once instead of
            # waiting for the broker to time out the member it was before the crash.
            group_instance_id=self.transactional_id,
            session_timeout_ms=self.config.session_timeout_ms,
        )
        self.consumer.subscribe(list(self._sources), listener=_Listener(self))
        log.info("processor started", group=self.config.group_id, transactional_id=self.transactional_id,
                 topics=list(self._sources))

    def _new_producer(self):
        producer = kafka_clients.producer(
            self.settings, transactional_id=self.transactional_id,
            transaction_timeout_ms=self.config.transaction_timeout_ms, linger_ms=50, batch_size=256 * 1024,
        )
        producer.init_transactions()  # aborts what a previous incarnation left open
        kafka_clients.find_group_coordinator(producer, self.settings.topic(self.config.group_id))
        self._sends = kafka_clients.TransactionalSends(producer)
        self._sink.bind(self._sends, producer)
        return producer

    def _shutdown(self) -> None:
        try:
            if self._in_txn:
                self._commit()
        except Exception:  # noqa: BLE001 - closing down: abort and let Kafka keep the committed state
            log.exception("commit at shutdown failed; the open transaction is aborted")
            self._abort()
        finally:
            if self.consumer is not None:
                self.consumer.close()
            if self.producer is not None:
                self.producer.close()
            for table in self._tables.values():
                table.close()
            log.info("processor stopped", group=self.config.group_id, records=self.metrics.records,
                     dead_letters=self.metrics.dead_letters, commits=self.metrics.commits)

    # -- the loop ----------------------------------------------------------------
    def _refresh_tables(self) -> None:
        # Called from run(), not from _poll_once: kafka-python's poll(timeout_ms=0) keeps
        # a timeout exception whose traceback holds every frame up the stack. Were one of
        # them _poll_once's, each polled batch (records, decoded events) would live on
        # until the garbage collector found the cycle instead of going when the batch is
        # done: a tenth of intake's time went to collecting them.
        for table in self._tables.values():
            table.refresh()
        self.engine.table_values = {name: table.values for name, table in self._tables.items()}

    def _poll_once(self) -> None:
        batches = self.consumer.poll(timeout_ms=self.config.poll_timeout_ms)
        if batches and self.metrics.first_record_at is None:
            self.metrics.first_record_at = time.monotonic()
        try:
            for tp, records in batches.items():
                source = self._sources[tp.topic]
                engine = self.engine
                decoded = [engine.decode(source, r) for r in records]
                if source.prepare is not None:
                    engine.prepare(source, [d for d in decoded if isinstance(d, dict)])
                for record, event in zip(records, decoded):
                    if not self._in_txn:
                        self._begin()
                    if event is not SKIP:
                        engine.process(source, record, event)
                    self._offsets[tp] = record.offset + 1
                    self._txn_records += 1
                    self.metrics.records += 1
                    self.metrics.records_by_topic[source.topic] = \
                        self.metrics.records_by_topic.get(source.topic, 0) + 1
                    if self._commit_due():
                        self._commit()
                        if self._stop.is_set():
                            # The records fetched but not handled are past the position
                            # yet not committed: whoever reads next starts with them.
                            return
            if self._commit_due(idle=not batches):
                self._commit()
        except KafkaError as exc:
            self._transaction_failed(exc)
        finally:
            logs.hold_record(None)  # the last record's context ends with its batch

    def _begin(self) -> None:
        self.producer.begin_transaction()
        self._sends.begin()
        self._in_txn, self._txn_records, self._txn_started = True, 0, time.monotonic()

    def _fire_timers(self) -> None:
        """Due timers fire in a transaction of their own (at most once a timer interval)."""
        now = time.monotonic()
        if now - self._timers_checked < self.config.timer_interval_ms / 1000:
            return
        self._timers_checked = now
        now_ms = int(self.engine.clock() * 1000)
        if not self.engine.timers_due(now_ms):
            return
        try:
            if not self._in_txn:
                self._begin()
            self.engine.fire_timers(now_ms)
            self._commit()
        except KafkaError as exc:
            self._transaction_failed(exc)

    def _transaction_failed(self, exc: KafkaError) -> None:
        """The open transaction cannot commit: drop it and go back to the committed state."""
        if isinstance(exc, FENCED + LOST_GENERATION):
            log.warning("transaction lost; resetting to the committed offsets", error=repr(exc))
            self._recover(fenced=isinstance(exc, FENCED))
        else:
            log.error("transaction failed; aborting and resetting to the committed offsets", error=repr(exc))
            self._recover(fenced=False)

    def _commit_due(self, idle: bool = False) -> bool:
        return self._in_txn and (idle or self._stop.is_set()
                                 or self._txn_records >= self.config.commit_every
                                 or (time.monotonic() - self._txn_started) * 1000 >= self.config.commit_interval_ms)

    # -- commit and recovery --------------------------------------------------------
    def _commit(self) -> None:
        if not self._in_txn:
            return
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._offsets.items()}
        if offsets:
            self.producer.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
        self.producer.commit_transaction()
        self._in_txn = False
        self._offsets.clear()
        self.metrics.commits += 1
        self.metrics.finished_at = time.monotonic()

    def _abort(self) -> None:
        if self._in_txn:
            try:
                self.producer.abort_transaction()
            except Exception:  # noqa: BLE001 - a fenced or broken producer is replaced below
                log.warning("abort failed; replacing the producer")
                self._replace_producer()
            self.metrics.aborts += 1
        self._in_txn = False
        self._offsets.clear()

    def _replace_producer(self) -> None:
        try:
            self.producer.close(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        self.producer = self._new_producer()

    def _recover(self, fenced: bool, tps: list[TopicPartition] | None = None) -> None:
        """Drop the open transaction (a fenced producer cannot abort: it is replaced) and
        put `tps` (default: every assigned partition) back to their committed state."""
        if fenced:
            self._in_txn = False
            self._offsets.clear()
            self.metrics.aborts += 1
            self._replace_producer()
        else:
            self._abort()
        self._reset_to_committed(list(self.consumer.assignment()) if tps is None else tps)

    def _reset_to_committed(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            committed = self.consumer.committed(tp)
            if committed is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
        self._restore({tp.partition for tp in tps})

    # -- state -------------------------------------------------------------------
    def _ensure_changelog(self) -> None:
        from planshift.topics import ensure_topic

        partitions = max(self._partition_count(t) for t in self._sources)
        ensure_topic(self.settings, self._changelog, partitions, {"cleanup.policy": "compact"})

    def _partition_count(self, topic: str) -> int:
        from planshift.topics import existing_partitions

        have = existing_partitions(self.settings, [topic])
        if topic not in have:
            raise LookupError(f"topic {topic!r} does not exist; run 'planshift topics create'")
        return have[topic]

    def _restore(self, partitions: set[int]) -> None:
        if not self._changelog or not partitions:
            return
        began = time.monotonic()
        restored = restore(self.settings, self._changelog, sorted(partitions),
                           derived_from=[(self.settings.topic(t), fold) for t, fold in self.config.derived_from])
        self.engine.adopt_stores(restored)
        keys = sum(len(s) for s in restored.values())
        self.metrics.restored_keys += keys
        log.info("state restored", partitions=sorted(partitions), keys=keys,
                 seconds=round(time.monotonic() - began, 3))

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        new = {tp.partition for tp in assigned} - set(self.engine.stores)
        self._restore(new)

    def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if self._in_txn:
            try:
                self._commit()
            except Exception as exc:  # noqa: BLE001 - bounded: abort and let the new owner redo it
                log.warning("commit on revocation failed; aborting", error=repr(exc))
                # The partitions kept go back to their committed offsets too.
                self._recover(isinstance(exc, FENCED), [tp for tp in self.consumer.assignment() if tp not in revoked])
        still_owned = {tp.partition for tp in self.consumer.assignment() if tp not in revoked}
        for partition in {tp.partition for tp in revoked} - still_owned:
            self.engine.drop_store(partition)

    def caught_up(self, topic: str, ends: dict[int, int]) -> bool:
        """Whether this instance has read `topic` (contract name) up to `ends` on every partition."""
        if self.consumer is None:
            return False
        name = self.settings.topic(topic)
        assigned = {tp.partition: tp for tp in self.consumer.assignment() if tp.topic == name}
        if set(assigned) != set(ends):
            return False
        return all(self.consumer.position(assigned[p]) >= end for p, end in ends.items())

    @property
    def assigned_partitions(self) -> set[TopicPartition]:
        return set(self.consumer.assignment()) if self.consumer else set()


def _collect_less_often() -> None:
    """Full garbage collections at most once per 100 young-generation rounds (default 10).

    A processor keeps its partitions' state in memory and it grows with every record,
    so CPython's rule (a full collection whenever a quarter more objects have survived)
    fires every few thousand records and walks all of them: intake spent 7% of its time
    there. Records and events themselves are freed by reference counting; only cyclic
    garbage waits longer for a full collection. Never lowers a threshold set by the host."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, max(old, 100))


class _Listener(ConsumerRebalanceListener):
    def __init__(self, processor: StreamProcessor):
        self.processor = processor

    def on_partitions_revoked(self, revoked):
        if revoked:
            self.processor._on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned):
        if assigned:
            self.processor._on_assigned(set(assigned))

    def on_partitions_lost(self, lost):
        # Another member may already own them: abandon the open work without committing.
        processor = self.processor
        if processor._in_txn:
            processor._abort()
        for tp in lost:
            processor.engine.drop_store(tp.partition)


class _KafkaSink:
    """The engine's records go into the processor's open transaction. `bind` makes
    `send` the current producer's own (one call less per record on the hot path)."""

    def __init__(self) -> None:
        self.send = self.partition_count = None
        self._producer = None

    def bind(self, sends: kafka_clients.TransactionalSends, producer) -> None:
        self.send, self.partition_count, self._producer = sends.send, sends.partition_count, producer

    def dead_letter(self, topic, key, value, headers) -> None:
        self._producer.send(topic, key=key, value=value, headers=headers)
