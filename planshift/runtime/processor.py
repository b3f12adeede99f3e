"""The consume → handle → produce loop, written once, with exactly-once output.

Every planshift consumer runs on it — intake, migration, settlement, the billing
simulator, the archiver (whose output is the lake, a `Sink` flushed at commit) and the
dead-letter re-drive (a bounded run over a dead-letter topic). The rules of a record
live in the broker-free `Engine`; this class is the Kafka half: polling, the
transactions (`checkpoint.py` writes the commit protocol down step by step),
rebalances, and recovery.

If any step of a commit fails, the transaction is aborted and every assigned partition
is reset to its committed offset, with its store rebuilt from the changelog, so the
in-memory state again matches what Kafka holds. A fenced producer cannot even abort:
it is closed and replaced, and the same reset follows.

Rebalances: before partitions are revoked the open transaction is committed (bounded
by the producer's timeouts; on failure it is aborted), then their stores are dropped.
Newly assigned partitions have their stores restored before any of their records is
handled: they are paused, and the loop rebuilds their stores a bounded slice per round
between its polls (`state.Restoration`), then resumes them, so a long restore neither
holds the consumer past `max.poll.interval.ms` nor stops its other partitions. Between
polls the loop also fires due timers and deletes expired state. SIGTERM and SIGINT
finish the record in hand, commit, and leave the group.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import (
    AuthorizationError,
    CommitFailedError,
    IllegalGenerationError,
    InvalidProducerEpochError,
    KafkaError,
    ProducerFencedError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from planshift import logs
from planshift.kafka import clients, fastpath
from planshift.kafka.assignor import CopartitionedCooperativeStickyAssignor
from planshift.kafka.topics import ensure_topic, existing_partitions
from planshift.logs import get_logger
from planshift.runtime.checkpoint import CallTimedOut, Checkpoint
from planshift.runtime.engine import Engine, ProcessorConfig, Source
from planshift.runtime.state import Restoration
from planshift.runtime.tables import GlobalTable
from planshift.settings import Settings

__all__ = ["ProcessorConfig", "Source", "StreamProcessor"]

log = get_logger(__name__)

# With a backlog a transaction commits after this long unless the consumer or
# PLANSHIFT_COMMIT_INTERVAL_MS says otherwise (a consumer that has caught up commits
# sooner: checkpoint.py).
DEFAULT_COMMIT_INTERVAL_MS = 200
# Each round of the loop gives a restore in progress at most this long before it polls.
RESTORE_SLICE_S = 0.25
# Expired keys deleted per round at most: a million keys expiring at once (a restart after
# a long pause) go over many short rounds, not in one long one.
EXPIRE_PER_ROUND = 10_000
CHANGELOG_SEGMENT_MS = 60 * 60 * 1000
# While a partition is held at a record whose work is under way (`Source.ready`), the
# loop polls at most this long before it looks at that record again.
HELD_POLL_MS = 10
# How often the loop measures its lag and the consumer's gauges for /metrics.
MEASURE_INTERVAL_S = 5.0

FENCED = (ProducerFencedError, InvalidProducerEpochError)
# A producer that is fenced, or whose call ran out of time, cannot be trusted to abort:
# it is closed and replaced (the new one's init_transactions aborts what it left open).
REPLACE = FENCED + (CallTimedOut,)
LOST_GENERATION = (CommitFailedError, IllegalGenerationError, UnknownMemberIdError, RebalanceInProgressError)


class StreamProcessor:
    def __init__(self, settings: Settings, config: ProcessorConfig, clock: Callable[[], float] = time.time):
        self.settings = settings
        if config.commit_interval_ms is None:
            config = dataclasses.replace(config, commit_interval_ms=settings.commit_interval_ms
                                         or DEFAULT_COMMIT_INTERVAL_MS)
        self.config = config
        # Everything a record's rules decide happens in the engine; this class is the Kafka half.
        self._outlet = _KafkaOutlet()
        self.engine = Engine(settings, config, self._outlet, clock)
        self.metrics = self.engine.metrics
        self._sources = self.engine.sources
        self.checkpoint = Checkpoint(self.metrics, config.commit_every, config.commit_interval_ms,
                                     config.commit_when_idle, config.sinks, config.call_timeout_ms / 1000)
        # The topics each sink takes the records of (cluster name → sink).
        self._sinks = {settings.topic(t): sink for sink in config.sinks for t in sink.topics}
        self._timers_checked = 0.0
        # Partitions to put back to their committed state at the next poll: a rebalance
        # callback cannot (kafka-python's consumer may not block inside one).
        self._reset_due: set[TopicPartition] = set()
        self._came_round = time.monotonic()  # when the loop last began a round (exit_if_stalled)
        self.longest_round_s = 0.0  # the longest a round of the loop has taken
        # Stores being rebuilt: partition → the restoration that will deliver its store.
        self._restoring: dict[int, Restoration] = {}
        # Partitions held at a record whose work is not done (`Source.ready`): paused, with
        # that record and the ones read after it, in order.
        self._held: dict[TopicPartition, list[tuple[Any, Any]]] = {}
        self._stop = threading.Event()
        self._tables: dict[str, GlobalTable] = {}
        self._changelog = self.engine.changelog
        self.transactional_id = f"{settings.topic_prefix}{config.group_id}-{config.instance}"
        self.consumer = None
        self.producer = None
        self.telemetry = None  # the /metrics, /healthz, /readyz server, when a port is set
        self._joined = False  # the group gave this member an assignment (perhaps empty)
        self._measured = 0.0

    def stop(self) -> None:
        """Finish the record in hand, commit, leave the group (from any thread)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and Ctrl-C stop the processor cleanly (for a process that runs only it)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def exit_if_stalled(self, code: int = 70) -> None:
        """End the process if the loop makes no progress for `stall_timeout_ms` (for a
        process that runs only this processor: its supervisor starts it again).

        Every call to the broker is bounded, so the loop should always come round; should
        it not, kafka-python's heartbeat thread would keep the stuck member in its group,
        holding its partitions for good. Leaving the process lets the group move them
        (after the session timeout) and a restart redo the open transaction's work."""
        limit = self.config.stall_timeout_ms / 1000

        def watch() -> None:
            while not self._stop.wait(min(5.0, limit / 4)):
                stalled = time.monotonic() - self._came_round
                if self.consumer is not None and stalled > limit:
                    log.error("the processing loop made no progress; exiting, so that the group moves "
                              "its partitions", group=self.config.group_id, seconds=round(stalled))
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)

        threading.Thread(target=watch, name="planshift-stall-watch", daemon=True).start()

    # -- lifecycle ---------------------------------------------------------------
    def run(self, until: Callable[["StreamProcessor"], bool] | None = None) -> None:
        """Process until stopped, or until `until(self)` is true between transactions (a
        bounded run: the re-drive, tests and benchmarks)."""
        self._start()
        try:
            while not self._stop.is_set():
                began, self._came_round = self._came_round, time.monotonic()
                self._round_took(self._came_round - began)
                self._refresh_tables()
                self._restore_step()
                self._poll_once()
                self._fire_timers()
                self._measure()
                if until is not None and not self.checkpoint.open and until(self):
                    break
        finally:
            self._shutdown()

    def _round_took(self, seconds: float) -> None:
        self.longest_round_s = max(self.longest_round_s, seconds)
        if seconds > self.config.session_timeout_ms / 1000:
            # Its heartbeats kept it in the group, so its partitions waited for it.
            log.warning("a round of the loop took longer than the session timeout", seconds=round(seconds, 1),
                        session_timeout_s=self.config.session_timeout_ms / 1000)

    def _start(self) -> None:
        if self.settings.metrics_port is not None and self.telemetry is None:
            from planshift.runtime.telemetry import TelemetryServer

            self.telemetry = TelemetryServer(self, self.settings.metrics_port).start()
        fastpath.install_rejoin_fix()
        fastpath.install_resume_fix()  # a held partition is paused (`_handle`)
        if self._changelog:
            self._ensure_changelog()
        for topic in self.config.tables:
            table = GlobalTable(self.settings, self.settings.topic(topic))
            table.bootstrap()
            self._tables[topic] = table
        self.consumer = clients.consumer(
            self.settings, self.settings.topic(self.config.group_id),
            partition_assignment_strategy=[CopartitionedCooperativeStickyAssignor],
            max_poll_records=self.config.max_poll_records,
            fetch_max_wait_ms=self.config.fetch_max_wait_ms,
            # Static membership (KIP-345) under the same stable name as the transactional
            # id: a restarted instance takes its own place in the group at once instead of
            # waiting for the broker to time out the member it was before the crash.
            group_instance_id=self.transactional_id,
            session_timeout_ms=self.config.session_timeout_ms,
        )
        self.producer = self._new_producer()
        self.consumer.subscribe(list(self._sources), listener=_Listener(self))
        log.info("processor started", group=self.config.group_id, transactional_id=self.transactional_id,
                 topics=list(self._sources), fast_sends=self.settings.fast_sends)

    def _new_producer(self):
        producer = clients.producer(
            self.settings, transactional_id=self.transactional_id,
            transaction_timeout_ms=self.config.transaction_timeout_ms, linger_ms=50, batch_size=256 * 1024,
        )
        producer.init_transactions()  # aborts what a previous incarnation left open
        if self.settings.fast_sends:
            fastpath.find_group_coordinator(producer, self.settings.topic(self.config.group_id))
            sends = fastpath.FastSends(producer)
        else:
            sends = clients.PublicSends(producer)
        self._outlet.bind(sends, producer)
        self.checkpoint.bind(producer, sends, self.consumer)
        return producer

    def _shutdown(self) -> None:
        try:
            if self.checkpoint.open:
                self.checkpoint.commit()
        except Exception:  # noqa: BLE001 - closing down: abort and let Kafka keep the committed state
            log.exception("commit at shutdown failed; the open transaction is aborted")
            self.checkpoint.abort()
        finally:
            # Bounded, so SIGTERM always ends a consumer: whatever is not sent by now
            # belongs to a transaction that was aborted or will be.
            if self.consumer is not None:
                self.consumer.close(timeout_ms=self.config.call_timeout_ms)
                self._leave_group()
            if self.producer is not None:
                self.producer.close(timeout=self.config.call_timeout_ms / 1000)
            for table in self._tables.values():
                table.close()
            for restoration in set(self._restoring.values()):
                restoration.close()
            if self.telemetry is not None:
                self.telemetry.close()
            log.info("processor stopped", group=self.config.group_id, records=self.metrics.records,
                     dead_letters=self.metrics.dead_letters, commits=self.metrics.commits,
                     longest_round_s=round(self.longest_round_s, 3))

    def _leave_group(self) -> None:
        """A static member stays in its group until its session times out, so that a
        crashed instance finds its place again; one stopped on purpose leaves at once, so
        that its partitions move now and the group is empty for a replay (`ops/offsets.py`)."""
        if not self._joined:
            return
        try:
            from kafka.admin import MemberToRemove

            admin = clients.admin(self.settings)
            try:
                admin.remove_group_members(self.engine.group, [MemberToRemove(group_instance_id=self.transactional_id)])
            finally:
                admin.close()
        except Exception as exc:  # noqa: BLE001 - the session timeout removes it anyway
            log.warning("could not leave the group; the broker removes this member after the session timeout",
                        error=repr(exc), session_timeout_s=self.config.session_timeout_ms / 1000)

    # -- health --------------------------------------------------------------------
    def config_topics(self) -> list[str]:
        return [source.topic for source in self._sources.values()]

    def health(self) -> dict:
        """/healthz: the loop is alive if it came round within max.poll.interval.ms."""
        limit = (self.consumer.config["max_poll_interval_ms"] if self.consumer is not None else 300_000) / 1000
        since = time.monotonic() - self._came_round
        return {"alive": since <= limit, "group": self.engine.group, "instance": self.transactional_id,
                "seconds_since_round": round(since, 3), "limit_s": limit}

    def readiness(self) -> dict:
        """/readyz: joined the group, and every assigned partition's state restored."""
        consumer = self.consumer
        partitions = len({tp.partition for tp in consumer.assignment()}) if consumer is not None else 0
        restoring = sorted(self._restoring)
        ready = consumer is not None and self._joined and not restoring and not self._stop.is_set()
        return {"ready": ready, "group": self.engine.group, "instance": self.transactional_id,
                "joined": self._joined, "partitions": partitions, "restoring": restoring}

    def _measure(self) -> None:
        """Every few seconds, when served: lag per partition and the consumer's gauges."""
        if self.telemetry is None or time.monotonic() - self._measured < MEASURE_INTERVAL_S:
            return
        self._measured = time.monotonic()
        lag = {}
        for tp in self.consumer.assignment():
            try:
                end, position = self.consumer.highwater(tp), self.consumer.position(tp, timeout_ms=0)
            except Exception:  # noqa: BLE001 - not known yet (just assigned, restoring)
                continue
            if end is not None and position is not None:
                lag[(tp.topic, tp.partition)] = max(0, end - position)
        self.metrics.lag = lag
        if self.config.gauges is not None:
            try:
                self.metrics.gauges = self.config.gauges(self.engine, int(self.engine.clock() * 1000))
            except Exception:  # noqa: BLE001 - a gauge must not stop the loop
                log.exception("measuring the consumer's gauges failed")

    # -- the loop ----------------------------------------------------------------
    def _refresh_tables(self) -> None:
        # Called from run(), not from _poll_once: kafka-python's poll(timeout_ms=0) keeps
        # a timeout exception whose traceback holds every frame up the stack. Were one of
        # them _poll_once's, each polled batch (records, decoded events) would live on
        # until the garbage collector found the cycle instead of going when the batch is done.
        for table in self._tables.values():
            table.refresh()
        self.engine.table_values = {name: table.values for name, table in self._tables.items()}

    def _poll_once(self) -> None:
        # While a restore is under way the loop only looks in, so that it goes on at once;
        # while a partition is held, soon again, to see whether its record's work is done.
        timeout_ms = 0 if self._restoring else self.checkpoint.wait_ms(self.config.poll_timeout_ms)
        if self._held:
            timeout_ms = min(timeout_ms, HELD_POLL_MS)
        batches = self.consumer.poll(timeout_ms=timeout_ms)
        if self._reset_due:
            due, self._reset_due = self._reset_due & self.consumer.assignment(), set()
            self._reset_to_committed(list(due))
            batches = {tp: records for tp, records in batches.items() if tp not in due}
        if batches and self.metrics.first_record_at is None:
            self.metrics.first_record_at = time.monotonic()
        checkpoint, engine = self.checkpoint, self.engine
        try:
            # Every partition's records decoded first, so that a source's `prepare` sees the
            # whole poll at once (intake: one directory round trip; migration over a licence
            # API: the batches of different tenants side by side).
            decoded_by_tp = {tp: [engine.decode(self._sources[tp.topic], r) for r in records]
                             for tp, records in batches.items()}
            for source in {self._sources[tp.topic].topic: self._sources[tp.topic] for tp in batches}.values():
                if source.prepare is not None:
                    engine.prepare(source, [d for tp, decoded in decoded_by_tp.items()
                                            if self._sources[tp.topic] is source for d in decoded if isinstance(d, dict)])
            # The held partitions first: their records were read before this poll's.
            for tp, items in list(self._held.items()):
                if not self._handle(tp, items):
                    return
            for tp, records in batches.items():
                if not self._handle(tp, list(zip(records, decoded_by_tp.pop(tp)))):
                    return
            # Less than a full poll: nothing more was waiting, this consumer has caught up.
            caught_up = bool(self._held) or sum(map(len, batches.values())) < self.config.max_poll_records
            if checkpoint.due(idle=not batches, stopping=self._stop.is_set(), caught_up=caught_up):
                checkpoint.commit()
        except KafkaError as exc:
            self._transaction_failed(exc)
        finally:
            logs.hold_record(None)  # the last record's context ends with its batch

    def _handle(self, tp: TopicPartition, items: list[tuple[Any, Any]]) -> bool:
        """Handle a partition's records (record, decoded event) in order. A record whose work
        (started by `prepare`) is not done yet holds its partition: it and the records after
        it wait here, in memory, with the partition paused, while other partitions' records
        go on and commit. False: stopping, whatever is not handled is left to the next reader."""
        source, checkpoint, engine, metrics = self._sources[tp.topic], self.checkpoint, self.engine, self.metrics
        took = metrics.handler_histogram(source.topic)
        for i, (record, event) in enumerate(items):
            if source.ready is not None and isinstance(event, dict) and not source.ready(event):
                if tp not in self._held:
                    self.consumer.pause(tp)
                self._held[tp] = items[i:]
                return True
            if not checkpoint.open:
                checkpoint.begin()
            began = time.perf_counter()
            engine.process(source, record, event)
            took.observe(time.perf_counter() - began)
            checkpoint.track(tp, record.offset)
            metrics.records += 1
            metrics.records_by_topic[source.topic] = metrics.records_by_topic.get(source.topic, 0) + 1
            if checkpoint.due(stopping=self._stop.is_set()):
                checkpoint.commit()
                if self._stop.is_set():
                    # The records fetched but not handled are past the position yet
                    # not committed: whoever reads next starts with them.
                    return False
        if self._held.pop(tp, None) is not None:
            self.consumer.resume(tp)  # all handled: read on
        return True

    def _fire_timers(self) -> None:
        """Due timers fire, and expired state is deleted, in a transaction of their own (at
        most once a timer interval)."""
        now = time.monotonic()
        if now - self._timers_checked < self.config.timer_interval_ms / 1000:
            return
        self._timers_checked = now
        now_ms = int(self.engine.clock() * 1000)
        timers, expiry = self.engine.timers_due(now_ms), self.engine.expiry_due(now_ms)
        if not (timers or expiry):
            return
        try:
            if not self.checkpoint.open:
                self.checkpoint.begin()
            if timers:
                self.engine.fire_timers(now_ms)
            if expiry and self.engine.expire(now_ms, EXPIRE_PER_ROUND) == EXPIRE_PER_ROUND:
                self._timers_checked = 0.0  # more may be due: look again next round
            self.checkpoint.commit()
        except KafkaError as exc:
            self._transaction_failed(exc)

    def _transaction_failed(self, exc: KafkaError) -> None:
        """The open transaction cannot commit: drop it and go back to the committed state.
        An ACL that says no is not retried: this process was given the wrong credentials
        (or its role lacks a right), and no retry changes that; it stops, saying so."""
        if isinstance(exc, AuthorizationError):
            log.error("not authorized; stopping (each role's rights: planshift acls list)", error=repr(exc),
                      user=self.settings.sasl_username)
            self._drop_transaction(replace=True)
            raise exc
        if isinstance(exc, REPLACE + LOST_GENERATION):
            log.warning("transaction lost; resetting to the committed offsets", error=repr(exc))
            self._recover(fenced=isinstance(exc, REPLACE))
        else:
            log.error("transaction failed; aborting and resetting to the committed offsets", error=repr(exc))
            self._recover(fenced=False)

    # -- recovery ------------------------------------------------------------------
    def _replace_producer(self) -> None:
        """Close the producer (without waiting on what it holds) and make a new one, trying
        again while the broker cannot be reached (until stopped)."""
        try:
            self.producer.close(timeout=0)
        except Exception:  # noqa: BLE001
            pass
        backoff = 0.5
        while True:
            try:
                self.producer = self._new_producer()
                return
            except KafkaError as exc:
                if self._stop.is_set():
                    raise
                log.warning("cannot make a new producer yet; trying again", error=repr(exc), seconds=backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _drop_transaction(self, replace: bool) -> None:
        """Drop the open transaction: abort it, or — for a producer that is fenced, timed
        out or cannot abort — forget it and replace the producer."""
        if replace:
            self.checkpoint.forget()
            self._replace_producer()
        elif not self.checkpoint.abort():
            self._replace_producer()

    def _recover(self, fenced: bool, tps: list[TopicPartition] | None = None) -> None:
        """Drop the open transaction and put `tps` (default: every assigned partition) back
        to their committed state."""
        self._drop_transaction(replace=fenced)
        self._reset_to_committed(list(self.consumer.assignment()) if tps is None else tps)

    def _reset_to_committed(self, tps: list[TopicPartition]) -> None:
        self._assign_sinks(tps)
        self._drop_held(tps, resume=True)
        for tp in tps:
            committed = self.consumer.committed(tp)
            if committed is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
        self._restore({tp.partition for tp in tps})

    def _drop_held(self, tps, resume: bool) -> None:
        """Forget the held records of `tps`: they are read again from the committed offsets."""
        dropped = [tp for tp in tps if self._held.pop(tp, None) is not None]
        if dropped and resume:
            self.consumer.resume(*dropped)

    def _assign_sinks(self, tps) -> None:
        """Tell each sink the partitions it now starts afresh (what it buffered is void)."""
        for tp in tps:
            sink = self._sinks.get(tp.topic)
            if sink is not None:
                sink.assigned(self._sources[tp.topic].topic, tp.partition)

    # -- state -------------------------------------------------------------------
    def _ensure_changelog(self) -> None:
        partitions = max(self._partition_count(t) for t in self._sources)
        # Segments roll hourly, so that compaction (which never touches the active segment)
        # keeps a restore close to the live keys instead of every write since the start.
        ensure_topic(self.settings, self._changelog, partitions,
                     {"cleanup.policy": "compact", "segment.ms": str(CHANGELOG_SEGMENT_MS)})

    def _partition_count(self, topic: str) -> int:
        have = existing_partitions(self.settings, [topic])
        if topic not in have:
            raise LookupError(f"topic {topic!r} does not exist; run 'planshift topics create'")
        return have[topic]

    @property
    def restoring(self) -> bool:
        """Whether some assigned partition waits for its store (paused until it is whole)."""
        return bool(self._restoring)

    def _restore(self, partitions: set[int]) -> None:
        """Begin rebuilding the stores of `partitions`; their records wait (paused) until then."""
        if not self._changelog or not partitions:
            return
        for partition in partitions:
            self.engine.drop_store(partition)
        restoration = Restoration(self.settings, self._changelog, partitions,
                                  [(self.settings.topic(t), fold) for t, fold in self.config.derived_from])
        for partition in partitions:
            self._restoring[partition] = restoration
        self.consumer.pause(*[tp for tp in self.consumer.assignment() if tp.partition in partitions])
        log.info("state restore began", partitions=sorted(partitions))

    def _restore_step(self) -> None:
        """Give each restoration under way a slice of this round; adopt and resume each
        partition as soon as its store is whole."""
        for restoration in list(dict.fromkeys(self._restoring.values())):
            mine = {p for p, r in self._restoring.items() if r is restoration}
            if not mine:  # every partition went elsewhere meanwhile
                restoration.close()
                continue
            began = time.monotonic()
            try:
                restoration.step(RESTORE_SLICE_S)
            except KafkaError as exc:  # the broker went away mid-read: begin again at the next round
                log.warning("state restore interrupted; beginning it again", error=repr(exc),
                            partitions=sorted(mine))
                restoration.restart(mine)
            self.metrics.restore_seconds += time.monotonic() - began
            whole = restoration.take_whole() & mine
            if not whole:
                continue
            stores = {p: restoration.stores[p] for p in whole}
            self.engine.adopt_stores(stores)
            for p in whole:
                del self._restoring[p]
            self.consumer.resume(*[tp for tp in self.consumer.assignment()
                                   if tp.partition in whole and tp not in self._held])
            keys = sum(len(s) for s in stores.values())
            self.metrics.restored_keys += keys
            self.metrics.restores.observe(time.monotonic() - restoration.began)
            log.info("state restored", partitions=sorted(whole), keys=keys,
                     seconds=round(time.monotonic() - restoration.began, 3),
                     longest_round_s=round(self.longest_round_s, 3))

    def _rebalanced(self, event: str) -> None:
        self.metrics.rebalances[event] = self.metrics.rebalances.get(event, 0) + 1

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._rebalanced("assigned")
        self._assign_sinks(assigned)
        # A partition whose store is being rebuilt waits for it on every topic.
        waiting = [tp for tp in assigned if tp.partition in self._restoring]
        if waiting:
            self.consumer.pause(*waiting)
        new = {tp.partition for tp in assigned} - set(self.engine.stores) - set(self._restoring)
        self._restore(new)

    def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._rebalanced("revoked")
        if self.checkpoint.open:
            try:
                self.checkpoint.commit()
            except Exception as exc:  # noqa: BLE001 - bounded: abort and let the new owner redo it
                log.warning("commit on revocation failed; aborting", error=repr(exc))
                self._drop_transaction(replace=isinstance(exc, REPLACE))
                # The partitions kept go back to their committed state too, at the next poll.
                self._reset_due |= {tp for tp in self.consumer.assignment() if tp not in revoked}
                self._discard(revoked)
        self._drop_held(revoked, resume=False)
        still_owned = {tp.partition for tp in self.consumer.assignment() if tp not in revoked}
        for partition in {tp.partition for tp in revoked} - still_owned:
            self.engine.drop_store(partition)
            self._restoring.pop(partition, None)

    def _on_lost(self, lost: set[TopicPartition]) -> None:
        self._rebalanced("lost")
        # Another member may already own them: abandon the open work without committing.
        if self.checkpoint.open:
            self._drop_transaction(replace=False)
        self._discard(lost)
        self._drop_held(lost, resume=False)
        for tp in lost:
            self.engine.drop_store(tp.partition)
            self._restoring.pop(tp.partition, None)

    def _discard(self, tps) -> None:
        for tp in tps:
            sink = self._sinks.get(tp.topic)
            if sink is not None:
                sink.discard(self._sources[tp.topic].topic, tp.partition)

    def caught_up(self, topic: str, ends: dict[int, int]) -> bool:
        """Whether this instance has read `topic` (contract name) up to `ends` on every partition."""
        if self.consumer is None:
            return False
        name = self.settings.topic(topic)
        assigned = {tp.partition: tp for tp in self.consumer.assignment() if tp.topic == name}
        if set(assigned) != set(ends):
            return False
        return all(self._position(assigned[p]) >= end for p, end in ends.items())

    def _position(self, tp: TopicPartition) -> int:
        """The offset of the next record this instance handles on `tp` (a held one's first)."""
        held = self._held.get(tp)
        return held[0][0].offset if held else self.consumer.position(tp)

    @property
    def assigned_partitions(self) -> set[TopicPartition]:
        return set(self.consumer.assignment()) if self.consumer else set()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, processor: StreamProcessor):
        self.processor = processor

    def on_partitions_revoked(self, revoked):
        if revoked:
            self.processor._on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned):
        self.processor._joined = True
        if assigned:
            self.processor._on_assigned(set(assigned))

    def on_partitions_lost(self, lost):
        if lost:
            self.processor._on_lost(set(lost))


class _KafkaOutlet:
    """The engine's records go into the processor's open transaction. `bind` makes
    `send` the current sends' own (one call less per record on the hot path)."""

    def __init__(self) -> None:
        self.send = self.partition_count = None
        self._producer = None

    def bind(self, sends, producer) -> None:
        self.send, self.partition_count, self._producer = sends.send, sends.partition_count, producer

    def dead_letter(self, topic, key, value, headers) -> None:
        self._producer.send(topic, key=key, value=value, headers=headers)
