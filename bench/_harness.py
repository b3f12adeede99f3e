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
