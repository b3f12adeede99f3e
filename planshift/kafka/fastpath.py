"""The runtime's fast paths through kafka-python's private parts, in this module only.

Everything here uses internals of kafka-python 3.0.x (pinned `<3.1` in pyproject.toml)
and is installed explicitly by the runtime (`planshift/runtime/processor.py`) or, for
the flush fix, by `clients.producer` for every transactional producer, and for the EOF
fix by `clients` for every client; nothing else in
planshift touches a private attribute of kafka-python:

- `FastSends`: records appended straight to the producer's open batches, and
  `find_group_coordinator`, the group coordinator looked up before the first commit. Used
  when `Settings.fast_sends` is on (the default); PLANSHIFT_FAST_SENDS=0 makes the
  runtime use `clients.PublicSends` (`KafkaProducer.send`) instead. CI runs the
  transaction and end-to-end tests both ways, so a kafka-python upgrade that breaks this
  module shows at once, and users can switch it off until it is fixed.
- `install_rejoin_fix`, `install_resume_fix`, `install_flush_fix` and `install_eof_fix`:
  work-arounds for kafka-python 3.0.x bugs (a race in the group coordinator, a resumed
  partition never read again, `linger_ms` off after a transaction's first commit, the
  broker's last answer dropped when it closes the connection, for every client by
  `clients`), not optimisations: they stay on with fast sends off, and are installed only
  on the kafka-python versions they were written against.
"""

from __future__ import annotations

import functools
import time

import kafka
from kafka import KafkaProducer, TopicPartition
from kafka.producer.producer_batch import ProducerBatch
from kafka.protocol.metadata import CoordinatorType
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.record.util import encode_varint

from planshift.kafka.partitioning import murmur2
from planshift.logs import get_logger

log = get_logger(__name__)

PATCHED_VERSIONS = ("3.0.",)  # the kafka-python versions the fixes below were written against


_INSTALLED: dict[str, bool] = {}  # fix → whether it is in place (asked once per process)


def _patch(cls, name: str, fix: str, wrap, applies=lambda: True) -> bool:
    """Replace `cls.<name>` with `wrap(original)`, once per fix; refused, with one warning,
    on a kafka-python the fix was not written for (or where `applies()`, asked once, says
    its code differs)."""
    if fix in _INSTALLED:
        return _INSTALLED[fix]
    if not kafka.__version__.startswith(PATCHED_VERSIONS) or not hasattr(cls, name) or not applies():
        log.warning(f"kafka-python {fix} fix not installed: written for 3.0.x", kafka_python=kafka.__version__)
        _INSTALLED[fix] = False
        return False
    setattr(cls, name, wrap(getattr(cls, name)))
    _INSTALLED[fix] = True
    return True


def install_rejoin_fix() -> bool:
    """Work around a kafka-python 3.0.x race that leaves a consumer without partitions.

    When `poll()` times out while a JoinGroup/SyncGroup round is in flight, the round
    is kept as `_join_task` for the next poll to collect. But if that round was started
    because the metadata changed (not by `request_rejoin()`), the leader's own
    assignment step makes `need_rejoin()` false, the next poll never enters the join
    loop, and the assignment is silently dropped: the member stays in the group with
    no partitions and the group never rebalances again. Treating a join in flight as
    "rejoin needed" makes the next poll collect it (or redo it), as intended.

    Returns whether the fix is in place (idempotent; refused, with a warning, on a
    kafka-python it was not written for).
    """
    from kafka.coordinator.consumer import ConsumerCoordinator

    def wrap(original):
        def need_rejoin(self):
            if getattr(self, "_join_task", None) is not None:
                return True
            return original(self)
        return need_rejoin

    return _patch(ConsumerCoordinator, "need_rejoin", "rejoin", wrap)


def install_resume_fix() -> bool:
    """Work around a kafka-python 3.0.x bug that leaves a resumed partition unread for good.

    Records fetched for a partition that is paused meanwhile are parked, and given back
    once it is resumed (KAFKA-7548), but only when the fetcher's in-line slot is `None`.
    A slot whose records have all been read is left holding an empty, falsy object, not
    `None`, so in a busy consumer the parked records are never given back, and the
    partition, which counts as having buffered data, is never fetched again: it is
    stuck at that offset while the consumer reads its other partitions. An empty slot
    is made `None` before each read, as the restore intends.

    Returns whether the fix is in place (idempotent; refused, with a warning, on a
    kafka-python it was not written for).
    """
    from kafka.consumer.fetcher import Fetcher

    def wrap(original):
        def fetched_records(self, *args, **kwargs):
            if self._next_partition_records is not None and not self._next_partition_records:
                self._next_partition_records = None
            return original(self, *args, **kwargs)
        return fetched_records

    def parks() -> bool:  # KAFKA-7548's port
        return "_paused_partition_records" in Fetcher.__init__.__code__.co_names

    return _patch(Fetcher, "fetched_records", "resume", wrap, applies=parks)


def install_flush_fix() -> bool:
    """Work around a kafka-python 3.0.x bug that turns `linger_ms` off for good after a
    transaction's first commit.

    While a transaction commits or aborts with records still unsent, the sender begins a
    flush (`RecordAccumulator.begin_flush`), so that they go at once, as Java's sender
    does; but nothing ever ends that flush, so `flush_in_progress()` stays true for the
    producer's life and every later batch is ready as soon as it is made: each send
    becomes a produce request of its own (measured: 285 produce requests for a migration
    worker's 300 batches, with `linger_ms=50`), which costs the broker CPU that other
    processes on its host need. The sender now ends the flush it began once the
    transaction has completed.

    Returns whether the fix is in place (idempotent; refused, with a warning, on a
    kafka-python it was not written for).
    """
    from kafka.producer.sender import Sender

    def wrap(original):
        def _maybe_send_pending_request(self):
            accumulator, transactions = self._accumulator, self._transaction_manager
            if getattr(self, "_planshift_flushing", False) and not transactions.is_completing():
                self._planshift_flushing = False  # the transaction is over: so is the flush begun for it
                accumulator._flushes_in_progress.decrement()
            flushes = accumulator._flushes_in_progress.get()
            try:
                return original(self)
            finally:
                if accumulator._flushes_in_progress.get() > flushes and transactions.is_completing():
                    self._planshift_flushing = True
        return _maybe_send_pending_request

    return _patch(Sender, "_maybe_send_pending_request", "flush", wrap)


def install_eof_fix() -> bool:
    """Work around a kafka-python 3.0.x bug that drops the broker's last answer before it
    closes a connection.

    When one read brings the last bytes of a response and the end of the stream, the
    transport reports the close and throws the bytes away. The broker does exactly that
    when it refuses a login (its SaslAuthenticate error, then the close), so on a loaded
    host a refused password most often looks like "socket disconnected": the client never
    learns it was refused and retries for good, instead of failing at once on the cached
    authentication failure. The bytes are now handed to the connection first, and the close
    comes after the connection has acted on them (the task waiting for that response runs
    first: the selector resumes tasks in the order they are made ready).

    Returns whether the fix is in place (idempotent; refused, with a warning, on a
    kafka-python it was not written for).
    """
    from kafka.errors import KafkaProtocolError
    from kafka.net.transport import KafkaTCPTransport

    def wrap(original):
        async def _read_from_sock(self):
            while self._read and not self._closed:
                await self._net.wait_read(self._sock)
                received, error = self._sock_recv()
                if received and self._protocol is not None:
                    self.last_read = time.monotonic()
                    if self._protocol._sensors:
                        self._protocol._sensors.bytes_received.record(len(received))
                    try:
                        self._protocol.data_received(received)
                    except KafkaProtocolError as exc:
                        return self.abort(error=exc)
                if error is not None:
                    if not received:
                        return self.abort(error=error)

                    def close_after_the_answer():
                        self.abort(error=error)

                    self._net.call_soon(close_after_the_answer)
                    return None
            return None
        return _read_from_sock

    def reads() -> bool:  # the loop this replaces: read, hand over, or abort
        return {"_sock_recv", "abort", "data_received"} <= set(KafkaTCPTransport._read_from_sock.__code__.co_names)

    return _patch(KafkaTCPTransport, "_read_from_sock", "eof", wrap, applies=reads)


def flushing(producer: KafkaProducer) -> bool:
    """Whether a flush of `producer`'s buffered records is under way (every batch ready at once)."""
    return producer._accumulator.flush_in_progress()


def find_group_coordinator(producer: KafkaProducer, group_id: str) -> None:
    """Have a transactional producer look up `group_id`'s coordinator now, in the background.

    kafka-python looks it up only when the first `send_offsets_to_transaction` needs it,
    and then sends that lookup and the offset commit as retries, each after
    `retry_backoff_ms`: the first commit of every new producer would take
    `retry_backoff_ms` longer than the others (bench/README.md)."""
    transactions = producer._transaction_manager
    with transactions._lock:
        transactions._lookup_coordinator(CoordinatorType.GROUP, group_id)
    producer._sender.wakeup()


class FastSends:
    """Sends into the open transaction of a transactional `KafkaProducer`, for the
    runtime's hot path.

    `KafkaProducer.send` does on every call what a transaction needs once: it checks
    the topic's metadata, runs the partitioner, estimates the record size, formats a
    debug line, asks the transaction manager about the partition, and creates a future
    per record that its I/O thread must complete again. Here the partition of a key is
    computed once (with the default partitioner's murmur2, so records land where every
    other producer's do and co-partitioning holds), a partition joins the transaction
    once, and the record is appended to the partition's open batch directly (or to a
    new batch, made as the accumulator makes one). No future is kept per record: a
    record's fate is its transaction's, and a batch that fails fails
    `commit_transaction()`, which the runtime handles by aborting.

    Anything this path does not take — a topic whose metadata is not known yet, a record
    without a key or partition, a value over the request size — goes through
    `KafkaProducer.send` (and its accumulator), unchanged. `tests/test_transactions.py` checks its records against a `read_committed` reader,
    and against what `clients.PublicSends` sends.
    """

    def __init__(self, producer: KafkaProducer):
        self._producer = producer
        self._accumulator = producer._accumulator
        self._transactions = producer._transaction_manager
        self._metadata = producer._metadata
        self._partitions: dict[tuple[str, bytes], int] = {}
        self._ordered: dict[str, list[int]] = {}  # a topic's partitions, as the default partitioner sorts them
        self._joined: set = set()  # partitions already in the open transaction
        self._tps: dict[str, list[TopicPartition]] = {}  # a topic's TopicPartitions, by partition number
        self._max_size = producer.config["max_request_size"]
        self._batch_size = producer.config["batch_size"]
        self._compression = self._accumulator.config["compression_attrs"]
        self._new_batches = self._accumulator.config["message_version"] == 2

    def begin(self) -> None:
        """A new transaction: every partition must join it again."""
        self._joined.clear()

    def partition_count(self, topic: str) -> int:
        """How many partitions `topic` has (asks the cluster the first time)."""
        known = self._metadata._partitions.get(topic)
        return len(known) if known else len(self._producer.partitions_for(topic))

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
             partition: int | None = None) -> None:
        if partition is None:
            partition = self._partition(topic, key)
            if partition is None:
                self._producer.send(topic, key=key, value=value, headers=headers)
                return
        else:
            known = self._metadata._partitions.get(topic)
            if known is None or partition not in known:  # send() fetches the topic's metadata first
                self._producer.send(topic, key=key, value=value, headers=headers, partition=partition)
                return
        tps = self._tps.get(topic)
        if tps is None or partition >= len(tps):  # new topic, or partitions were added
            tps = self._tps[topic] = [TopicPartition(topic, p) for p in range(self.partition_count(topic))]
        tp = tps[partition]
        if tp not in self._joined:
            self._transactions.maybe_add_partition_to_transaction(tp)
            self._joined.add(tp)
        if value is not None and len(value) >= self._max_size:  # let send() refuse it properly
            self._producer.send(topic, key=key, value=value, headers=headers, partition=partition)
            return
        timestamp = int(time.time() * 1000)
        accumulator = self._accumulator
        with accumulator._tp_lock(tp):
            batches = accumulator._batches.get(tp)
            if batches:
                batch = batches[-1]
                appended = _append_record(batch.records, timestamp, key, value, headers)
                if appended is not None:
                    batch.last_append = time.monotonic()
                    if appended > batch.max_record_size:
                        batch.max_record_size = appended
                    if len(batch.records._builder._buffer) < self._batch_size:
                        return
                    self._producer._sender.wakeup()
                    return
            if self._new_batches and not accumulator._closed:
                # What `RecordAccumulator.append` does for a new batch, minus the future.
                batch = ProducerBatch(tp, MemoryRecordsBuilder(2, self._compression, self._batch_size))
                batch.max_record_size = _append_record(batch.records, timestamp, key, value, headers)
                accumulator._batches[tp].append(batch)
                accumulator._incomplete.add(batch)
                self._producer._sender.wakeup()
                return
        self._producer.send(topic, key=key, value=value, headers=headers, partition=partition,
                            timestamp_ms=timestamp)

    def _partition(self, topic: str, key: bytes | None) -> int | None:
        if key is None:
            return None
        partitions = self._metadata._partitions.get(topic)  # partitions_for_topic() without copying to a set
        if partitions is None:
            return None
        ordered = self._ordered.get(topic)
        found = self._partitions.get((topic, key))
        if found is not None and len(ordered) == len(partitions):
            return found
        if ordered is None or len(ordered) != len(partitions):  # new topic, or partitions were added
            ordered = self._ordered[topic] = sorted(partitions.keys())
            self._partitions = {k: v for k, v in self._partitions.items() if k[0] != topic}
        if len(self._partitions) >= 100_000:  # keys of batches are unique: keep the cache bounded
            self._partitions.clear()
        found = self._partitions[(topic, key)] = ordered[(murmur2(key) & 0x7FFFFFFF) % len(ordered)]
        return found


def _zigzag_varint(value: int) -> bytes:
    out = bytearray()
    encode_varint(value, out.append)
    return bytes(out)


_SMALL_VARINTS = [_zigzag_varint(n) for n in range(16384)]
_NULL = _zigzag_varint(-1)  # a null key, value or header value: length -1


def _varint(value: int) -> bytes:
    return _SMALL_VARINTS[value] if 0 <= value < 16384 else _zigzag_varint(value)


@functools.lru_cache(maxsize=1024)
def _header_bytes(headers: tuple[tuple[str, bytes | None], ...]) -> bytes:
    parts = [_varint(len(headers))]
    for name, value in headers:
        name = name.encode("utf-8")
        parts += [_varint(len(name)), name, _NULL if value is None else _varint(len(value)) + value]
    return b"".join(parts)


def _append_record(records, timestamp: int, key: bytes | None, value: bytes | None,
                   headers: list[tuple[str, bytes | None]]) -> int | None:
    """`MemoryRecordsBuilder.append` for the v2 record format, byte for byte, in fewer steps:
    the varints come from a table and a header section is encoded once per distinct set.
    Returns the record's size in the batch, or None when the batch has no room for it."""
    builder = records._builder
    if records._closed or records._magic != 2:
        appended = None if records._closed else records.append(timestamp, key, value, headers)
        return None if appended is None else appended.size
    offset = records._next_offset
    first = builder._first_timestamp is None
    body = b"".join((
        b"\x00",  # attributes
        _varint(0 if first else timestamp - builder._first_timestamp),
        _varint(offset),
        _NULL if key is None else _varint(len(key)) + key,
        _NULL if value is None else _varint(len(value)) + value,
        _header_bytes(tuple(headers)),
    ))
    prefix = _varint(len(body))
    size = len(prefix) + len(body)
    buffer = builder._buffer
    if not first and size + len(buffer) > builder._batch_size:
        return None
    if first:
        builder._first_timestamp = builder._max_timestamp = timestamp
    elif builder._max_timestamp < timestamp:
        builder._max_timestamp = timestamp
    builder._num_records += 1
    builder._last_offset = offset
    buffer += prefix
    buffer += body
    records._next_offset += 1
    return size
