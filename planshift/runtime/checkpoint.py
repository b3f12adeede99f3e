"""The commit protocol: one Kafka transaction's worth of handled records (Quix Streams
calls the same thing a checkpoint).

A checkpoint is opened before the first record of an interval is handled and closed when
it holds `commit_every` records or has been open `commit_interval_ms`, whichever comes
first. A consumer that is not behind commits sooner (unless its config says otherwise):
at once when a poll finds nothing, and after `CAUGHT_UP_COMMIT_MS` when a poll returned
less than a full batch — its records are the latest there are, and someone is waiting for
what they decide; only a consumer with a backlog holds a transaction open for its whole
interval, where larger transactions buy throughput. In order:

1. `begin()`: `begin_transaction()`. Every output, state change and dead letter of the
   records handled from now on is sent into this transaction, invisible to
   `read_committed` readers.
2. `track(tp, offset)` after each record: the next offset of its partition.
3. `commit()`:
   a. the external sinks are flushed (the archiver's lake): what they hold is written
      before the offsets that say it was read, so a crash in between reads those records
      again, and the sink skips what it already holds (`sinks.py`);
   b. `send_offsets_to_transaction(offsets, consumer.group_metadata())`: the next offset
      of every handled partition joins the transaction, so the offsets commit if and
      only if the outputs and state changes do. The group metadata (generation and
      member id) lets the group coordinator refuse a zombie that lost its partitions in
      a rebalance it did not see (KIP-447); a transactional id alone could not;
   c. `commit_transaction()`: flushes every pending send, then commits atomically.

Why in this order: everything is sent before the offsets, so a crash anywhere before
3c leaves an open transaction that the broker aborts (or that the next producer with
the same transactional id aborts at `init_transactions`), and the records are handled
again from the committed offsets with the committed state. Nothing is visible until
3c, and after it everything is.

`abort()` drops an open transaction; `forget()` does so for a fenced producer, which
cannot even abort (the processor replaces it). After either, the processor resets the
partitions to their committed state.

Every call that waits on the broker is bounded (`Bounded`): kafka-python's
`send_offsets_to_transaction`, `commit_transaction` and `abort_transaction` wait without
a timeout for their result, and a broker that restarts at the wrong moment can leave that
result pending for ever. A call that runs out of time raises `CallTimedOut`; the
processor then treats its producer as a fenced one: closes it, makes a new one (whose
`init_transactions` aborts the transaction left open) and resets the partitions.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable

from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from planshift.logs import get_logger
from planshift.runtime.sinks import Sink

log = get_logger(__name__)


# How long a consumer that has caught up (its last poll returned less than a full batch)
# keeps a transaction open: Kafka Streams commits exactly-once tasks every 100 ms.
CAUGHT_UP_COMMIT_MS = 100


class CallTimedOut(KafkaTimeoutError):
    """A client call did not return within its bound: its producer is replaced."""


class Bounded:
    """Runs a client call for at most `seconds`, on a daemon thread of its own.

    A call that runs out of time leaves its thread waiting (kafka-python cannot cancel
    it) until the producer it waits on is closed, or the process ends: a daemon thread,
    so it never keeps the process from exiting."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        outcome: list[Any] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append((True, call(*args)))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                outcome.append((False, exc))
            finally:
                done.set()

        threading.Thread(target=run, name=f"planshift-{what}", daemon=True).start()
        if not done.wait(self.seconds):
            raise CallTimedOut(f"{what} did not return within {self.seconds:.0f}s")
        ok, value = outcome[0]
        if not ok:
            raise value
        return value


class Checkpoint:
    def __init__(self, metrics: Any, commit_every: int, commit_interval_ms: int, commit_when_idle: bool = True,
                 sinks: Iterable[Sink] = (), call_timeout_s: float = 30.0):
        self.bounded = Bounded(call_timeout_s)
        self.metrics = metrics
        self.commit_every = commit_every
        self.commit_interval_ms = commit_interval_ms
        self.commit_when_idle = commit_when_idle
        self.sinks = tuple(sinks)
        self.producer = self.consumer = self.sends = None
        self.open = False
        self.records = 0
        self._started = 0.0
        self._offsets: dict[TopicPartition, int] = {}

    def bind(self, producer, sends, consumer) -> None:
        """The clients of the checkpoints to come (again after a producer is replaced)."""
        self.producer, self.sends, self.consumer = producer, sends, consumer

    def begin(self) -> None:
        self.producer.begin_transaction()
        self.sends.begin()
        self.open, self.records, self._started = True, 0, time.monotonic()

    def track(self, tp: TopicPartition, offset: int) -> None:
        """The record at `offset` of `tp` is handled: reading resumes after it once this commits."""
        self._offsets[tp] = offset + 1
        self.records += 1

    def due(self, idle: bool = False, stopping: bool = False, caught_up: bool = False) -> bool:
        if not self.open:
            return False
        open_ms = (time.monotonic() - self._started) * 1000
        return ((idle and self.commit_when_idle) or stopping or self.records >= self.commit_every
                or open_ms >= self.commit_interval_ms
                or (caught_up and self.commit_when_idle
                    and open_ms >= min(CAUGHT_UP_COMMIT_MS, self.commit_interval_ms)))

    def wait_ms(self, longest: int) -> int:
        """How long the next poll may wait for records: while a transaction is open, no longer
        than until a consumer that has caught up would commit it."""
        if not self.open or not self.commit_when_idle:
            return longest
        left = min(CAUGHT_UP_COMMIT_MS, self.commit_interval_ms) - (time.monotonic() - self._started) * 1000
        return max(0, min(longest, int(left)))

    def commit(self) -> None:
        if not self.open:
            return
        began = time.perf_counter()
        for sink in self.sinks:
            sink.flush()
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._offsets.items()}
        if offsets:
            self.bounded("send_offsets_to_transaction", self.producer.send_offsets_to_transaction, offsets,
                         self.consumer.group_metadata())
        self.bounded("commit_transaction", self.producer.commit_transaction)
        self.open = False
        self._offsets.clear()
        self.metrics.commits += 1
        self.metrics.commit_seconds.observe(time.perf_counter() - began)
        self.metrics.committed()
        self.metrics.finished_at = time.monotonic()

    def abort(self) -> bool:
        """Abort the open transaction; False when the producer could not (it must be replaced)."""
        aborted = True
        if self.open:
            try:
                self.bounded("abort_transaction", self.producer.abort_transaction)
            except Exception:  # noqa: BLE001 - a fenced or broken producer is replaced by the caller
                log.warning("abort failed; the producer is replaced")
                aborted = False
            self.metrics.aborts += 1
        self.metrics.dropped()
        self.open = False
        self._offsets.clear()
        return aborted

    def forget(self) -> None:
        """Drop the open transaction of a fenced producer without a word to the broker."""
        if self.open:
            self.metrics.aborts += 1
        self.metrics.dropped()
        self.open = False
        self._offsets.clear()
