"""The processing runtime on the real broker: retries, dead letters, state, co-partitioned instances."""

from __future__ import annotations

from collections import Counter

import pytest

from planshift.kafka import clients
from planshift.kafka.assignor import _sticky_balance
from planshift.kafka.reader import read_topic
from planshift.kafka.topics import ensure_topic
from planshift.runtime import ProcessorConfig, Source, StreamProcessor
from tests.conftest import produce, running, values, wait_for


@pytest.fixture
def topics(settings):
    for name, partitions in (("numbers", 3), ("numbers.dlq", 1), ("totals", 1), ("letters", 3)):
        ensure_topic(settings, settings.topic(name), partitions, {})
    return settings


def counting_processor(settings, fail=lambda n, attempt: False, instance="0", sources_extra=(), tables=()):
    """Keeps a running total per key in state; emits the total after each number."""
    attempts = Counter()

    def handle(ctx, event):
        attempts[event["n"]] += 1
        if fail(event["n"], attempts[event["n"]]):
            raise RuntimeError(f"cannot handle {event['n']}")
        total = ctx.get(f"total:{ctx.key}", 0) + event["n"]
        ctx.put(f"total:{ctx.key}", total)
        ctx.emit("totals", ctx.key, {"key": ctx.key, "n": event["n"], "total": total}, event_type="total")

    processor = StreamProcessor(settings, ProcessorConfig(
        group_id="counter", sources=(Source("numbers", handle, schema=""), *sources_extra), commit_interval_ms=50,
        max_attempts=3, retry_backoff_s=0.01, instance=instance, tables=tables))
    processor.attempts = attempts
    return processor


def test_a_failing_record_is_retried_then_succeeds(topics):
    settings = topics
    produce(settings, "numbers", [("a", {"n": 1}), ("a", {"n": 2}), ("a", {"n": 3})])
    processor = counting_processor(settings, fail=lambda n, attempt: n == 2 and attempt < 3)
    with running(processor):
        wait_for(lambda: len(values(settings, "totals")) == 3, message="three totals")
    assert [v["total"] for v in values(settings, "totals")] == [1, 3, 6]
    assert processor.attempts[2] == 3 and processor.metrics.retries == 2
    assert values(settings, "numbers.dlq") == []


def test_a_record_that_keeps_failing_is_dead_lettered_and_the_rest_goes_on(topics):
    settings = topics
    produce(settings, "numbers", [("a", {"n": 1}), ("a", {"n": 13}), ("a", {"n": 5}), ("b", b"[not json")])
    processor = counting_processor(settings, fail=lambda n, attempt: n == 13)
    with running(processor):
        wait_for(lambda: len(values(settings, "numbers.dlq")) == 2, message="two dead letters")
        wait_for(lambda: len(values(settings, "totals")) == 2, message="two totals")
    assert [v["total"] for v in values(settings, "totals")] == [1, 6]  # 13 left no state behind
    from planshift.kafka.reader import read_topic

    dead = {d.value if isinstance(d.value, bytes) else d.value["n"]: d for d in
            read_topic(settings, settings.topic("numbers.dlq"))}
    failed = dead[13]
    assert failed.key == "a"
    assert failed.headers["dlq.error.class"] == b"RuntimeError"
    assert b"cannot handle 13" in failed.headers["dlq.error.message"]
    assert failed.headers["dlq.attempts"] == b"3"
    assert dead[b"[not json"].headers["dlq.error.class"] == b"InvalidEvent"
    assert dead[b"[not json"].headers["dlq.attempts"] == b"1"


def test_state_survives_a_restart_through_the_changelog(topics):
    settings = topics
    produce(settings, "numbers", [(k, {"n": n}) for n in (1, 2, 3) for k in ("a", "b", "c")])
    with running(counting_processor(settings)):
        wait_for(lambda: len(values(settings, "totals")) == 9, message="nine totals")
    produce(settings, "numbers", [(k, {"n": 10}) for k in ("a", "b", "c")])
    restarted = counting_processor(settings)
    with running(restarted):
        wait_for(lambda: len(values(settings, "totals")) == 12, message="twelve totals")
    assert restarted.metrics.restored_keys == 3
    last = {v["key"]: v["total"] for v in values(settings, "totals")}
    assert last == {"a": 16, "b": 16, "c": 16}


def test_two_instances_split_the_partitions_and_keep_topics_together(topics):
    settings = topics
    noop = Source("letters", lambda ctx, event: None, schema="")
    first = counting_processor(settings, instance="0", sources_extra=(noop,))
    second = counting_processor(settings, instance="1", sources_extra=(noop,))

    def split_evenly():
        a, b = first.assigned_partitions, second.assigned_partitions
        return len(a) + len(b) == 6 and a and b and not (a & b)

    with running(first), running(second):
        wait_for(split_evenly, 60, message="both instances to own partitions")
        for proc in (first, second):
            by_topic = {}
            for tp in proc.assigned_partitions:
                by_topic.setdefault(tp.topic.rsplit(".", 1)[-1], set()).add(tp.partition)
            assert by_topic["numbers"] == by_topic["letters"], by_topic
        produce(settings, "numbers", [(k, {"n": 1}) for k in "abcdefghij"])
        wait_for(lambda: len(values(settings, "totals")) == 10, message="ten totals")
    assert Counter(v["key"] for v in values(settings, "totals")) == Counter("abcdefghij")


@pytest.mark.parametrize("count,members,owned,expected", [
    (6, ["a"], {}, {"a": [0, 1, 2, 3, 4, 5]}),
    (6, ["a", "b"], {p: "a" for p in range(6)}, {"a": [0, 1, 2], "b": [3, 4, 5]}),
    (6, ["a", "b", "c"], {0: "a", 1: "a", 2: "a", 3: "b", 4: "b", 5: "b"}, {"a": [0, 1], "b": [3, 4], "c": [2, 5]}),
    (5, ["a", "b"], {0: "b", 1: "b", 2: "b"}, {"a": [3, 4], "b": [0, 1, 2]}),
])
def test_sticky_balance_keeps_owners_and_balances(count, members, owned, expected):
    assert _sticky_balance(list(range(count)), members, owned) == expected


def test_a_handled_batch_is_freed_at_once_not_by_the_garbage_collector(topics):
    """With a global table to refresh between polls, the polled records must still go
    when their batch is done (kafka-python's poll timeout once kept _poll_once's frame,
    and with it every batch, alive until a full garbage collection)."""
    import gc

    from planshift.kafka.topics import create_topics

    settings = topics
    create_topics(settings)  # service.health, the table
    produce(settings, "numbers", [(f"k{n % 7}", {"n": n}) for n in range(60)])
    processor = counting_processor(settings, tables=("service.health",))
    numbers = settings.topic("numbers")
    gc.collect()
    gc.disable()
    try:
        processor.run(until=lambda p: p.metrics.records >= 60)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left_to_the_collector = [o for o in gc.garbage
                                 if type(o).__name__ == "ConsumerRecord" and getattr(o, "topic", None) == numbers]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert processor.metrics.records == 60
    assert left_to_the_collector == []


@pytest.mark.parametrize("fast", [True, False], ids=["fast-sends", "public-sends"])
def test_the_fast_sends_switch_chooses_the_send_path_and_both_deliver(topics, fast):
    """PLANSHIFT_FAST_SENDS=0 must really take kafka-python's public `send()`, and the
    outputs must be the same either way."""
    from planshift.kafka import clients, fastpath

    settings = topics.with_(fast_sends=fast)
    produce(settings, "numbers", [("a", {"n": 1}), ("b", {"n": 2}), ("a", {"n": 3})])
    processor = counting_processor(settings)
    with running(processor):
        wait_for(lambda: len(values(settings, "totals")) == 3, message="three totals")
        sends = processor.checkpoint.sends
    assert isinstance(sends, fastpath.FastSends if fast else clients.PublicSends)
    assert sorted(v["total"] for v in values(settings, "totals")) == [1, 2, 4]


def test_a_commit_the_broker_never_answers_is_bounded_and_the_work_done_once(topics, kafka_broker):
    """The broker stops answering (SIGSTOP) while a transaction is open: the commit, which
    kafka-python would wait on for ever, gives up after `call_timeout_ms`; the producer is
    replaced once the broker is back, the partitions reset, and every record's output is
    there once (issue 12: a worker once waited for good in `send_offsets_to_transaction`)."""
    import os
    import signal
    import threading

    settings = topics
    produce(settings, "numbers", [("a", {"n": n}) for n in range(1, 121)])
    pid = kafka_broker.pid()
    stopped = threading.Event()

    def handle(ctx, event):
        if event["n"] == 60 and not stopped.is_set():
            stopped.set()
            os.kill(pid, signal.SIGSTOP)  # the transaction holding records up to 60 is open
            threading.Timer(6.0, os.kill, (pid, signal.SIGCONT)).start()
        ctx.emit("totals", ctx.key, {"n": event["n"]}, event_type="total")

    processor = StreamProcessor(settings, ProcessorConfig(
        group_id="counter", sources=(Source("numbers", handle, schema=""),), stateful=False,
        commit_interval_ms=50, call_timeout_ms=2000))
    try:
        with running(processor, timeout=60):
            wait_for(lambda: len(values(settings, "totals")) >= 120, 90, message="every record's output")
    finally:
        os.kill(pid, signal.SIGCONT)
    outputs = [v["n"] for v in values(settings, "totals")]
    assert sorted(outputs) == list(range(1, 121)), "a record's output is missing or there twice"
    assert stopped.is_set() and processor.metrics.aborts >= 1


STALLING = """
import time
from planshift import logs
from planshift.runtime import ProcessorConfig, Source, StreamProcessor
from planshift.settings import Settings

logs.configure("INFO")
processor = StreamProcessor(Settings.from_env(), ProcessorConfig(
    group_id="staller", sources=(Source("numbers", lambda ctx, event: time.sleep(600), schema=""),),
    stateful=False, stall_timeout_ms=2000))
processor.exit_if_stalled()
processor.run()
"""


def test_a_stalled_loop_ends_its_process_so_the_group_can_move_its_partitions(topics, tmp_path):
    """A handler (or a call) that never returns: `planshift run` processes exit, logging why,
    instead of holding their partitions for good behind a live heartbeat."""
    import os
    import subprocess
    import sys

    settings = topics
    env = {**os.environ, "PLANSHIFT_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PLANSHIFT_TOPIC_PREFIX": settings.topic_prefix, "PLANSHIFT_DATA_DIR": str(tmp_path)}
    log = tmp_path / "staller.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-c", STALLING], env=env, stdout=out, stderr=out)
    try:
        produce(settings, "numbers", [("a", {"n": 1})])
        wait_for(lambda: process.poll() is not None, 60, message="the stalled process to exit")
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 70
    assert "made no progress" in log.read_text()


def _key_on(partition: int, partitions: int = 3) -> str:
    from planshift.kafka.partitioning import murmur2

    return next(k for k in (f"k{i}" for i in range(1000))
                if (murmur2(k.encode()) & 0x7FFFFFFF) % partitions == partition)


def test_a_long_restore_runs_in_the_loop_while_the_other_partitions_go_on(topics):
    """A partition's store is rebuilt between polls with the partition paused: its records
    wait for the whole store, the other partitions' records are handled meanwhile, and
    no round of the loop takes long (the member never nears max.poll.interval.ms)."""
    settings = topics
    big, small = _key_on(0), _key_on(1)
    changelog = settings.topic("counter.state.changelog")
    ensure_topic(settings, changelog, 3, {"cleanup.policy": "compact"})
    producer = clients.producer(settings, linger_ms=50, batch_size=512 * 1024)
    filler = b'{"pad": "' + b"x" * 40 + b'"}'
    for i in range(120_000):
        producer.send(changelog, key=f"filler:{i}".encode(), value=filler, partition=0)
    producer.send(changelog, key=f"total:{big}".encode(), value=b"100", partition=0)
    producer.flush(60)
    producer.close()

    processor = counting_processor(settings)
    seen_restoring = {}
    handle = processor._sources[settings.topic("numbers")].handle

    def watching(ctx, event):
        seen_restoring[ctx.key] = processor.restoring
        handle(ctx, event)

    processor._sources[settings.topic("numbers")] = Source("numbers", watching, schema="")
    produce(settings, "numbers", [(big, {"n": 1}), (small, {"n": 1})])
    with running(processor, timeout=60):
        wait_for(lambda: len(values(settings, "totals")) == 2, 90, message="both totals")
    totals = {v["key"]: v["total"] for v in values(settings, "totals")}
    assert totals == {big: 101, small: 1}  # the big partition's record waited for its whole store
    assert seen_restoring == {small: True, big: False}  # the small one went on during the restore
    assert processor.metrics.restored_keys == 120_001
    assert processor.longest_round_s < 10, processor.longest_round_s


def test_a_record_whose_work_is_under_way_holds_only_its_partition_and_is_read_once(topics):
    """`Source.ready`: a record whose work (started by `prepare`) is not done stops its
    partition, with the records after it kept in order; the other partitions' records
    are handled and committed meanwhile; once it is ready it and its followers go on,
    without being fetched or prepared again."""
    import threading

    settings = topics
    held, other = _key_on(0), _key_on(1)
    gate = threading.Event()
    prepared = Counter()

    def handle(ctx, event):
        ctx.emit("totals", ctx.key, {"key": ctx.key, "n": event["n"]}, event_type="total")

    def prepare(events):
        prepared.update(e["n"] for e in events)

    processor = StreamProcessor(settings, ProcessorConfig(
        group_id="holder", stateful=False, commit_interval_ms=50, instance="0",
        sources=(Source("numbers", handle, schema="", prepare=prepare,
                        ready=lambda event: event["n"] != 7 or gate.is_set()),)))
    produce(settings, "numbers", [(held, {"n": 7}), (held, {"n": 8}), (other, {"n": 1}), (other, {"n": 2})])
    with running(processor):
        wait_for(lambda: [v["n"] for v in values(settings, "totals")] == [1, 2], message="the other partition's")
        wait_for(lambda: processor._held, message="the first partition held")
        assert [tp.partition for tp in processor._held] == [0]
        assert [v["n"] for v in values(settings, "totals")] == [1, 2]  # 8 waits behind 7, on its partition
        gate.set()
        wait_for(lambda: len(values(settings, "totals")) == 4, message="the held partition's")
        wait_for(lambda: not processor._held, message="released")
    by_key = {}
    for v in values(settings, "totals"):
        by_key.setdefault(v["key"], []).append(v["n"])
    assert by_key == {other: [1, 2], held: [7, 8]}
    assert prepared == Counter({7: 1, 8: 1, 1: 1, 2: 1})  # held in memory: nothing read twice
    assert processor.metrics.records == 4


def test_held_records_go_with_their_partition_when_a_second_instance_joins(topics):
    """A rebalance while a partition is held: whoever owns the partition afterwards handles
    its records once and in order, and nobody is left with a partition paused or records held."""
    import threading

    settings = topics
    keys = [_key_on(p) for p in range(3)]
    gate = threading.Event()

    def holder(instance):
        return StreamProcessor(settings, ProcessorConfig(
            group_id="holder", stateful=False, commit_interval_ms=50, instance=instance,
            sources=(Source("numbers", lambda ctx, event: ctx.emit("totals", ctx.key, {"key": ctx.key, "n": event["n"]},
                                                                   event_type="total"), schema="",
                            ready=lambda event: event["n"] < 100 or gate.is_set()),)))

    first, second = holder("0"), holder("1")
    # each partition held at its second record, with one more behind it
    produce(settings, "numbers", [(k, {"n": n}) for k in keys for n in (1, 100, 101)])
    with running(first):
        wait_for(lambda: len(first._held) == 3, message="every partition held")
        with running(second):
            wait_for(lambda: first.assigned_partitions and second.assigned_partitions
                     and len(first.assigned_partitions | second.assigned_partitions) == 3, 60,
                     message="the partitions split between the two")
            gate.set()
            wait_for(lambda: len(values(settings, "totals")) == 9, message="every record handled")
            for proc in (first, second):
                wait_for(lambda: not proc._held and not proc.consumer.paused(), message="nothing held or paused")
    by_key = {}
    for v in values(settings, "totals"):
        by_key.setdefault(v["key"], []).append(v["n"])
    assert by_key == {k: [1, 100, 101] for k in keys}  # once each, in order


def test_two_fixes_of_one_class_both_go_in_and_each_once(monkeypatch):
    """`fastpath._patch` keeps its record per fix: it once marked the class, so a second fix
    of the same class would have been taken for installed and silently left out."""
    from planshift.kafka import fastpath

    class Patient:
        def first(self):
            return "first"

        def second(self):
            return "second"

    wrapped = []

    def wrap(original):
        wrapped.append(original.__name__)
        return lambda self: original(self).upper()

    monkeypatch.setattr(fastpath, "_INSTALLED", {})
    assert fastpath._patch(Patient, "first", "first", wrap) and fastpath._patch(Patient, "second", "second", wrap)
    assert fastpath._patch(Patient, "first", "first", wrap)  # asked again: not wrapped twice
    assert (Patient().first(), Patient().second(), wrapped) == ("FIRST", "SECOND", ["first", "second"])


def test_a_paused_partition_is_read_again_once_resumed(topics):
    """kafka-python 3.0.12 parks the records fetched for a partition that is paused, and
    never gives them back once the consumer has read its other partitions dry: resumed,
    the partition stayed at that offset for good (`fastpath.install_resume_fix`)."""
    import time

    from kafka import TopicPartition

    from planshift.kafka import fastpath

    settings = topics
    assert fastpath.install_resume_fix()
    produce(settings, "numbers", [(_key_on(p), {"n": i}) for p in (0, 1) for i in range(20)])
    name = settings.topic("numbers")
    paused, other = TopicPartition(name, 0), TopicPartition(name, 1)
    consumer = clients.consumer(settings, None, max_poll_records=5)
    consumer.assign([paused, other])
    read = {paused: [], other: []}

    def poll_until(condition, message):
        deadline = time.monotonic() + 20
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {message}: {read}"
            for tp, records in consumer.poll(timeout_ms=200).items():
                read[tp] += [r.offset for r in records]

    try:
        poll_until(lambda: read[paused], "the first records")
        consumer.pause(paused)  # the rest of what was fetched for it is parked
        poll_until(lambda: len(read[other]) == 20, "the other partition, read dry")
        consumer.resume(paused)
        poll_until(lambda: len(read[paused]) == 20, "the resumed partition")
    finally:
        consumer.close()
    assert read[paused] == list(range(20))  # in order, none lost, none twice


def test_expiring_state_is_deleted_with_its_tombstone_and_a_restart_knows_its_expiry(topics):
    from datetime import datetime, timedelta, timezone

    from planshift.runtime.state import EXPIRES_HEADER

    settings = topics
    now = [datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()]

    def remember(ctx, event):
        ctx.put(f"seen:{event['n']}", True, expires_at=ctx.now() + timedelta(days=event["days"]))

    def counter():
        return StreamProcessor(settings, ProcessorConfig(
            group_id="remember", sources=(Source("numbers", remember, schema=""),), commit_interval_ms=50,
            timer_interval_ms=50), clock=lambda: now[0])

    produce(settings, "numbers", [("a", {"n": 1, "days": 1}), ("a", {"n": 2, "days": 10})])
    first = counter()
    with running(first):
        wait_for(lambda: first.metrics.records == 2 and first.metrics.commits >= 1, message="two keys kept")
    changelog = [r for r in read_topic(settings, settings.topic("remember.state.changelog"))]
    assert {r.key: int(r.headers[EXPIRES_HEADER]) // 1000 for r in changelog} == {
        "seen:1": int(now[0]) + 86400, "seen:2": int(now[0]) + 10 * 86400}

    now[0] += 2 * 86400  # two days on: seen:1 is past its time, seen:2 is not
    second = counter()
    with running(second):
        wait_for(lambda: second.metrics.expired_keys == 1 and not second.checkpoint.open, message="one expired")
        assert second.metrics.restored_keys == 2
        assert {k for store in second.engine.stores.values() for k, _ in store.items()} == {"seen:2"}
    tombstones = [r.key for r in read_topic(settings, settings.topic("remember.state.changelog")) if r.value is None]
    assert tombstones == ["seen:1"]
