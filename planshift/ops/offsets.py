"""Replays (CONTRACT.md §7): move a stopped consumer group to the start, an offset or a time.

Safe because every planshift consumer is idempotent: a repeated `upgrade_id` starts
nothing, a repeated batch migrates nobody twice, a repeated completion settles nothing
twice, and the archive skips what the lake holds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from kafka import TopicPartition
from kafka.admin import MemberToRemove, OffsetSpec
from kafka.protocol.consumer.offsets import OffsetTimestamp

from planshift.errors import OperationError
from planshift.kafka import clients
from planshift.settings import Settings


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
    admin = clients.admin(settings)
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
            consumer = clients.consumer(settings, None)
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
