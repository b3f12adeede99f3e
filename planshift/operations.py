"""What operators do after an incident (CONTRACT.md §7): dead letters and replays.

- `dead_letters` lists a dead-letter topic; `redrive` publishes its records back to
  their source topics, exactly once: a transactional producer sends them and commits the
  dead-letter offsets of the `planshift-redrive` group in the same transaction, so a
  dead letter is re-driven once however often the command runs or crashes.
- `reset_offsets` moves a stopped consumer group to the start, an offset or a time.

Both are safe because every planshift consumer is idempotent: a repeated `upgrade_id`
starts nothing, a repeated batch migrates nobody twice, a repeated completion settles
nothing twice, and the archive and reconciliation count each event id once. Re-driven
records reach every consumer of their source topic, not only the one that failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from kafka import TopicPartition
from kafka.admin import MemberToRemove, OffsetSpec
from kafka.protocol.consumer.offsets import OffsetTimestamp
from kafka.structs import OffsetAndMetadata

from planshift import kafka_clients
from planshift.contract import CONSUMED_TOPICS, dlq
from planshift.settings import Settings
from planshift.topic_reader import Record, iter_topic

REDRIVE_GROUP = "planshift-redrive"


class OperationError(RuntimeError):
    pass


def dead_letter_topics() -> list[str]:
    return [dlq(t) for t in CONSUMED_TOPICS]


def dead_letters(settings: Settings, topic: str, timeout: float = 30.0) -> list[Record]:
    """Every committed record of a dead-letter topic (contract name, e.g. `upgrade.requested.dlq`)."""
    return list(iter_topic(settings, settings.topic(topic), timeout))


@dataclass
class RedriveReport:
    topic: str
    redriven: int
    skipped: int  # not matching the chosen group

    def describe(self) -> str:
        text = f"{self.topic}: re-drove {self.redriven} dead letters"
        return text + (f", left {self.skipped} of other groups" if self.skipped else "")


def redrive(settings: Settings, topic: str, group: str | None = None, timeout: float = 30.0) -> RedriveReport:
    """Publish the dead letters not yet re-driven back to their source topic, exactly once."""
    if not topic.endswith(".dlq"):
        raise OperationError(f"{topic} is not a dead-letter topic (they end in .dlq)")
    name = settings.topic(topic)
    consumer = kafka_clients.consumer(settings, settings.topic(REDRIVE_GROUP))
    producer = kafka_clients.producer(settings, transactional_id=f"{settings.topic(REDRIVE_GROUP)}-{topic}")
    report = RedriveReport(topic, 0, 0)
    try:
        producer.init_transactions()
        partitions = consumer.partitions_for_topic(name)
        if not partitions:
            raise OperationError(f"topic {name!r} does not exist")
        consumer.subscribe([name])
        end_reached = False
        deadline = time.monotonic() + timeout
        ends: dict[TopicPartition, int] | None = None
        while not end_reached:
            if time.monotonic() > deadline:
                raise TimeoutError(f"re-driving {name} did not finish within {timeout:.0f}s")
            batches = consumer.poll(timeout_ms=500)
            if ends is None and consumer.assignment():
                ends = consumer.end_offsets(list(consumer.assignment()))
            if batches:
                producer.begin_transaction()
                offsets = {}
                for tp, records in batches.items():
                    for r in records:
                        headers = dict(r.headers or [])
                        wanted = group is None or headers.get("dlq.consumer.group", b"").decode() == settings.topic(group)
                        if wanted and "dlq.source.topic" in headers:
                            original = [(k, v) for k, v in (r.headers or []) if not k.startswith("dlq.")]
                            original.append(("dlq.redriven.from", f"{name}:{r.partition}:{r.offset}".encode()))
                            producer.send(headers["dlq.source.topic"].decode(), key=r.key, value=r.value,
                                          headers=original)
                            report.redriven += 1
                        else:
                            report.skipped += 1
                        offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
                producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
                producer.commit_transaction()
            if ends is not None:
                end_reached = all(consumer.position(tp) >= end for tp, end in ends.items())
    finally:
        consumer.close()
        producer.close()
    return report


def _members(admin, group: str) -> list:
    described = admin.describe_groups([group])
    info = described[0] if isinstance(described, list) else next(iter(described.values()))
    return (info.get("members") if isinstance(info, dict) else getattr(info, "members", [])) or []


def reset_offsets(settings: Settings, group: str, topics: Iterable[str] | None = None, *,
                  to_start: bool = False, to_offset: int | None = None, to_time: datetime | None = None
                  ) -> dict[TopicPartition, int]:
    """Move a stopped group's committed offsets (every partition of `topics`, or of what it has committed)."""
    chosen = [to_start, to_offset is not None, to_time is not None]
    if sum(chosen) != 1:
        raise OperationError("choose exactly one of: the start, an offset, a time")
    group_id = settings.topic(group)
    admin = kafka_clients.admin(settings)
    try:
        members = _members(admin, group_id)
        static = [m for m in members if (m.get("group_instance_id") if isinstance(m, dict)
                                         else getattr(m, "group_instance_id", None))]
        if members and len(static) < len(members):
            raise OperationError(f"group {group_id} has running members; stop its consumers first")
        if static:
            # Stopped planshift instances keep their static membership until the session
            # times out; an operator who stopped them may release it at once.
            admin.remove_group_members(group_id, [MemberToRemove(group_instance_id=m.get("group_instance_id")
                                                                 if isinstance(m, dict) else m.group_instance_id)
                                                  for m in static])
        if topics is None:
            committed = admin.list_group_offsets(group_id)
            committed = committed.get(group_id, committed) if isinstance(committed, dict) else committed
            tps = sorted(committed, key=lambda tp: (tp.topic, tp.partition))
        else:
            consumer = kafka_clients.consumer(settings, None)
            try:
                tps = [TopicPartition(settings.topic(t), p) for t in topics
                       for p in sorted(consumer.partitions_for_topic(settings.topic(t)) or ())]
            finally:
                consumer.close()
        if not tps:
            raise OperationError(f"group {group_id} has no committed offsets and no topic was named")
        if to_start:
            spec = OffsetSpec.EARLIEST
        elif to_time is not None:
            spec = OffsetTimestamp(int(to_time.timestamp() * 1000))
        else:
            spec = to_offset
        result = admin.reset_group_offsets(group_id, {tp: spec for tp in tps})
    finally:
        admin.close()
    errors = {tp: r["error"] for tp, r in result.items() if r.get("error") not in (None,) and
              getattr(r.get("error"), "errno", 0) != 0}
    if errors:
        raise OperationError(f"resetting {group_id} failed: " + ", ".join(f"{tp.topic}[{tp.partition}]: "
                                                                          f"{e.__name__ if isinstance(e, type) else e}"
                                                                          for tp, e in errors.items()))
    return {tp: r["offset"] for tp, r in result.items()}
