"""Kafka transactions on the real broker: what a read_committed reader sees."""

from __future__ import annotations

import json

import pytest

from kafka import TopicPartition

from planshift.events import encode_json, event_headers
from planshift.kafka import clients, fastpath
from planshift.kafka.reader import read_topic, read_values
from tests.conftest import wait_for


def test_aborted_transaction_stays_invisible_to_read_committed(settings, topic_factory, unique_name):
    topic = topic_factory(partitions=2)
    producer = clients.producer(settings, transactional_id=unique_name("tx"))
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, key=b"a", value=encode_json({"n": 1}))
        producer.send(topic, key=b"b", value=encode_json({"n": 2}))
        producer.commit_transaction()

        producer.begin_transaction()
        producer.send(topic, key=b"a", value=encode_json({"n": "aborted"}))
        producer.flush()
        producer.abort_transaction()

        producer.begin_transaction()
        producer.send(topic, key=b"b", value=encode_json({"n": 3}))
        producer.commit_transaction()
    finally:
        producer.close()

    committed = sorted(v["n"] for v in read_values(settings, topic))
    assert committed == [1, 2, 3]

    # The aborted record is in the log: a read_uncommitted reader does see it.
    uncommitted = clients.consumer(settings, None, isolation_level="read_uncommitted")
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        uncommitted.assign(tps)
        uncommitted.seek_to_beginning(*tps)
        seen: list = []

        def saw_all():
            for records in uncommitted.poll(timeout_ms=200).values():
                seen.extend(json.loads(r.value)["n"] for r in records)
            return len(seen) >= 4

        wait_for(saw_all, 20, message="the read_uncommitted reader")
        assert "aborted" in seen
    finally:
        uncommitted.close()


def test_open_transaction_is_not_read_until_committed(settings, topic_factory, unique_name):
    topic = topic_factory()
    producer = clients.producer(settings, transactional_id=unique_name("tx"))
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, value=encode_json({"n": "pending"}))
        producer.flush()
        # The record is written but its transaction is open: nothing is stable yet.
        assert read_values(settings, topic, timeout=10) == []
        producer.commit_transaction()
    finally:
        producer.close()
    assert read_values(settings, topic) == [{"n": "pending"}]


def test_consumers_read_committed_with_the_cooperative_assignor(settings):
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

    consumer = clients.consumer(settings, "any-group")
    try:
        assert consumer.config["isolation_level"] == "read_committed"
        assert consumer.config["enable_auto_commit"] is False
        assert consumer.config["partition_assignment_strategy"] == [CooperativeStickyAssignor]
    finally:
        consumer.close()


@pytest.mark.parametrize("sends_class", [fastpath.FastSends, clients.PublicSends], ids=["fast", "public"])
def test_the_runtimes_sends_land_where_send_puts_them_and_live_or_die_with_the_transaction(
        settings, topic_factory, unique_name, sends_class):
    """`FastSends` bypasses `KafkaProducer.send`: its records must still go to the default
    partitioner's partition (co-partitioning with every other producer), keep their order
    and headers, and be committed or aborted with the transaction — as `PublicSends`'
    records, through `send()`, are."""
    from kafka.partitioner.default import murmur2

    topic, unseen = topic_factory(partitions=6), topic_factory(partitions=3)
    producer = clients.producer(settings, transactional_id=unique_name("tx"), batch_size=16 * 1024)
    sends = sends_class(producer)
    fallbacks = []  # the records that went through KafkaProducer.send
    original_send = producer.send
    producer.send = lambda *args, **kwargs: fallbacks.append(kwargs["key"]) or original_send(*args, **kwargs)
    keys = [f"tenant-{i % 25}".encode() for i in range(400)]  # repeated keys; batches fill and roll over
    try:
        producer.init_transactions()
        producer.begin_transaction()
        sends.begin()
        for n, key in enumerate(keys):
            sends.send(topic, key, encode_json({"n": n, "pad": "x" * 300}),
                       event_headers("test.event"))
        sends.send(topic, b"pinned", encode_json({"n": "pinned"}), [], partition=5)
        sends.send(topic, None, encode_json({"n": "keyless"}), [])
        sends.send(topic, b"large", encode_json({"n": "large", "pad": "x" * 40_000}), [])
        sends.send(unseen, b"unseen", encode_json({"n": "unseen"}), [], partition=2)
        producer.commit_transaction()

        producer.begin_transaction()
        sends.begin()
        sends.send(topic, keys[0], encode_json({"n": "aborted"}), [])
        producer.flush()
        producer.abort_transaction()
    finally:
        producer.close()

    records = read_topic(settings, topic)
    by_value = {r.value["n"]: r for r in records}
    assert len(records) == len(by_value) == 403 and "aborted" not in by_value
    for n, key in enumerate(keys):
        record = by_value[n]
        assert record.partition == (murmur2(key) & 0x7FFFFFFF) % 6, key
        assert record.headers == {"event_type": b"test.event", "schema_version": b"1"}
    assert by_value["pinned"].partition == 5
    if sends_class is fastpath.FastSends:
        # Only the first record (no metadata yet), the keyless one and the pinned one for a
        # topic the producer had not seen took send(); every batch after the first of a
        # partition (16 KiB each, ~40 records) was made by FastSends itself.
        assert fallbacks == [keys[0], None, b"unseen"], fallbacks
    else:
        assert len(fallbacks) == 405  # every send of both transactions
    assert [(r.partition, r.value["n"]) for r in read_topic(settings, unseen)] == [(2, "unseen")]
    assert by_value["large"].partition == (murmur2(b"large") & 0x7FFFFFFF) % 6
    for partition in range(6):  # each partition keeps the order of the sends
        numbers = [r.value["n"] for r in records if r.partition == partition and isinstance(r.value["n"], int)]
        assert numbers == sorted(numbers)


def test_linger_applies_again_after_a_transaction_commits(settings, topic_factory, unique_name):
    """kafka-python 3.0.12's sender begins a flush when a transaction commits with records
    unsent, and never ends it: from the first commit on, every batch went at once, whatever
    `linger_ms` said, a produce request per send (`fastpath.install_flush_fix`)."""
    import time

    topic = topic_factory(partitions=1)
    assert fastpath.install_flush_fix()
    producer = clients.producer(settings, transactional_id=unique_name("tx"), linger_ms=2000)
    try:
        producer.init_transactions()
        for n in range(2):  # records unsent at each commit: the commit flushes them
            producer.begin_transaction()
            producer.send(topic, key=b"a", value=encode_json({"n": n}))
            producer.commit_transaction()
        wait_for(lambda: not fastpath.flushing(producer), 10, message="the commit's flush to end")
        producer.begin_transaction()
        waiting = producer.send(topic, key=b"a", value=encode_json({"n": 2}))
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # well within the linger: the record waits for more
            assert not waiting.is_done, "sent before its linger_ms was up"
            time.sleep(0.05)
        producer.commit_transaction()  # which sends it at once
        assert waiting.is_done and waiting.succeeded()
    finally:
        producer.close()
    assert [v["n"] for v in read_values(settings, topic)] == [0, 1, 2]
