"""Shared pieces of the benchmarks: a broker of their own, topics under a fresh prefix."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from pathlib import Path

from planshift.kafka.topics import create_topics
from planshift.ops.broker import LocalBroker, free_port
from planshift.settings import Settings


@contextlib.contextmanager
def bench_settings(keep_dir: str | None = None):
    """Settings on a broker started for the benchmark (or PLANSHIFT_BOOTSTRAP_SERVERS if BENCH_USE_ENV=1)."""
    work = Path(keep_dir or tempfile.mkdtemp(prefix="planshift-bench-"))
    if os.environ.get("BENCH_USE_ENV") == "1":
        settings = Settings.from_env().with_(data_dir=work)
        broker = None
    else:
        settings = Settings.from_env({k: v for k, v in os.environ.items() if k == "PLANSHIFT_KAFKA_CACHE"})
        settings = settings.with_(bootstrap_servers=f"127.0.0.1:{free_port()}", data_dir=work)
        broker = LocalBroker(settings)
        began = time.monotonic()
        broker.start()
        print(f"broker started in {time.monotonic() - began:.1f}s at {settings.bootstrap_servers}")
    settings = settings.with_(topic_prefix=f"bench-{uuid.uuid4().hex[:6]}.")
    create_topics(settings)
    try:
        yield settings
    finally:
        if broker is not None:
            broker.stop()


def wait_settled(settings, groups: dict[str, int], timeout: float = 120) -> None:
    """Until each consumer group of `groups` (name → members) is Stable with that many
    members, each assigned some partitions: under the cooperative-sticky assignor the first
    member to join takes every partition, and the rebalances that spread them to the others
    take a few seconds more (a clock started before then times a rebalance too)."""
    from kafka.errors import KafkaError

    from planshift.kafka import clients

    admin = clients.admin(settings)
    deadline = time.monotonic() + timeout
    try:
        while True:
            unsettled = {}
            for group, members in groups.items():
                try:
                    found = next(iter(admin.describe_groups([settings.topic(group)]).values()))
                except KafkaError as exc:  # not there yet
                    found = {"error": repr(exc)}
                assigned = [m.get("member_assignment") or {} for m in found.get("members", [])]
                if not (found.get("group_state") == "Stable" and len(assigned) == members and all(
                        isinstance(a, dict) and any(t.get("partitions") for t in a.get("assigned_partitions", []))
                        for a in assigned)):
                    unsettled[group] = found
            if not unsettled:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer groups did not settle within {timeout:.0f}s: {unsettled}")
            time.sleep(0.2)
    finally:
        admin.close()


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User and system CPU time a process (or one of its threads) has used so far (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pid(settings) -> int | None:
    """The benchmark's own broker, from the pid file LocalBroker keeps."""
    try:
        return int((settings.data_dir / "kafka" / "broker.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _transactions(settings, topic: str, worker: int, seconds: float, done) -> None:
    """One process of `warm_broker`: transactions as a planshift consumer makes them."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    from planshift.kafka import clients

    producer = clients.producer(settings, transactional_id=f"bench-warm-{worker}")
    producer.init_transactions()
    consumer = clients.consumer(settings, f"bench-warm-{worker}", isolation_level="read_committed")
    partitions = [TopicPartition(topic, p) for p in range(settings.batch_partitions)]
    consumer.assign(partitions)
    made, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        consumer.poll(timeout_ms=0)
        producer.begin_transaction()
        for p in range(3):  # an output, a changelog record, a status: several partitions a transaction
            producer.send(topic, key=f"{worker}-{made}".encode(), value=b"x" * 200,
                          partition=(made * 3 + p + worker) % len(partitions))
        producer.send_offsets_to_transaction({partitions[made % len(partitions)]: OffsetAndMetadata(made, "", -1)},
                                             consumer.group_metadata())
        producer.commit_transaction()
        made += 1
    producer.close()
    consumer.close()
    done.put(made)


def warm_broker(settings, seconds: float, processes: int = 2) -> dict[str, float]:
    """Drive transactions through the broker for `seconds`, from `processes` processes:
    records to several partitions, a consumer's offsets and a commit each, read back
    `read_committed`, the requests a planshift consumer makes all day.

    A freshly started broker runs these paths interpreted, and its JIT compiler works on
    them for thousands of transactions (measured: some 5,600 in 60 s cost it 42–44 CPU-s,
    18 of them compiling), where a broker in service has long compiled them; a benchmark
    run of a few hundred transactions never gets there (after four 150,000-user pipeline
    runs the broker still took 1.4–1.8 CPU-s a run, and 0.6–1.2 after this). Returns the
    transactions made, and the CPU seconds the broker and its compiler threads used."""
    import multiprocessing

    from planshift.kafka.topics import ensure_topic

    topic = f"{settings.topic_prefix}bench-warm"
    ensure_topic(settings, topic, settings.batch_partitions, {})
    pid = broker_pid(settings)
    used, compiled = cpu_seconds(pid), jit_seconds(pid)
    done = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_transactions, args=(settings, topic, i, seconds, done))
               for i in range(processes)]
    for worker in workers:
        worker.start()
    made = sum(done.get(timeout=seconds + 120) for _ in workers)
    for worker in workers:
        worker.join(30)
    return {"transactions": made, "broker": cpu_seconds(pid) - used, "compiler": jit_seconds(pid) - compiled}


def jit_seconds(pid: int | None) -> float:
    """CPU seconds the JIT compiler threads of JVM `pid` have used so far (Linux /proc)."""
    used = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir() if pid is not None else ():
        try:
            compiler = (task / "comm").read_text().startswith(("C1 CompilerThre", "C2 CompilerThre"))
        except OSError:
            continue
        if compiler:
            used += cpu_seconds(pid, int(task.name))
    return used
