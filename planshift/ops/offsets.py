"""Replays (CONTRACT.md §7), as `kafka-consumer-groups --reset-offsets` does them.

`plan_reset` works out, per partition, where a stopped consumer group stands and where a
spec would move it (to the earliest or latest offset, an offset, a time, a duration ago,
or shifted by N), clamped to what the partition still holds, and how many records that
re-reads or skips; it changes nothing. `execute` writes the plan. Both refuse while the
group has members: the consumers must be stopped (a stopped planshift consumer leaves its
group at once; one that crashed is dropped by the broker after its session timeout).

Safe because every planshift consumer is idempotent: a repeated `upgrade_id` starts
nothing, a repeated batch migrates nobody twice, a repeated completion settles nothing
twice, and the archive skips what the lake holds.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterable

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from planshift.errors import OperationError
from planshift.kafka import clients
from planshift.settings import Settings

# Spec kinds: (kind, value) — ("earliest", None), ("latest", None), ("offset", N),
# ("datetime", ms since the epoch), ("duration", ms before now), ("shift", ±N).
KINDS = ("earliest", "latest", "offset", "datetime", "duration", "shift")


@dataclass(frozen=True)
class Move:
    tp: TopicPartition
    current: int | None  # the committed offset; None: the group never committed here
    new: int
    earliest: int
    latest: int

    @property
    def reread(self) -> int:
        """Records read again once the group starts at `new` (negative: records skipped)."""
        return (self.current if self.current is not None else self.latest) - self.new

    def describe(self) -> str:
        current = "-" if self.current is None else str(self.current)
        change = (f"re-reads {self.reread}" if self.reread > 0 else
                  f"skips {-self.reread}" if self.reread < 0 else "unchanged")
        return f"{self.tp.topic}[{self.tp.partition}]  {current} → {self.new}  ({change}; holds {self.earliest}–{self.latest})"


@dataclass(frozen=True)
class Plan:
    group: str
    moves: tuple[Move, ...]

    @property
    def reread(self) -> int:
        return sum(max(0, m.reread) for m in self.moves)

    @property
    def skipped(self) -> int:
        return sum(max(0, -m.reread) for m in self.moves)

    def describe(self) -> str:
        lines = [m.describe() for m in self.moves]
        lines.append(f"group {self.group}: {len(self.moves)} partitions, {self.reread} records to re-read"
                     + (f", {self.skipped} to skip" if self.skipped else ""))
        return "\n".join(lines)


def parse_topics(entries: Iterable[str]) -> dict[str, list[int] | None]:
    """`TOPIC` or `TOPIC:P,P…` (as kafka-consumer-groups --topic) → topic → partitions (None: all)."""
    chosen: dict[str, list[int] | None] = {}
    for entry in entries:
        topic, _, partitions = entry.partition(":")
        if not topic:
            raise OperationError(f"{entry!r}: a topic name is needed (TOPIC or TOPIC:0,1)")
        if not partitions:
            chosen[topic] = None
            continue
        try:
            numbers = sorted({int(p) for p in partitions.split(",")})
        except ValueError:
            raise OperationError(f"{entry!r}: partitions are whole numbers (TOPIC:0,1)") from None
        if topic in chosen and chosen[topic] is None:
            continue  # the whole topic was named already
        chosen[topic] = sorted(set(chosen.get(topic) or []) | set(numbers))
    return chosen


def members(admin, group_id: str) -> list[str]:
    """The group's members, named by their instance id (or member id)."""
    described = admin.describe_groups([group_id])
    info = described[0] if isinstance(described, list) else next(iter(described.values()))
    found = (info.get("members") if isinstance(info, dict) else getattr(info, "members", [])) or []

    def name(member) -> str:
        get = member.get if isinstance(member, dict) else lambda k: getattr(member, k, None)
        return get("group_instance_id") or get("member_id") or "?"

    return sorted(name(m) for m in found)


def refuse_if_active(admin, group_id: str, session_timeout_s: float = 15) -> None:
    active = members(admin, group_id)
    if active:
        raise OperationError(
            f"group {group_id} has {len(active)} active member{'s' if len(active) > 1 else ''} "
            f"({', '.join(active[:5])}{' …' if len(active) > 5 else ''}): stop its consumers first "
            f"(a consumer that crashed leaves the group {session_timeout_s:.0f} s after its last heartbeat)")


def plan_reset(settings: Settings, group: str, spec: tuple[str, int | None],
               topics: Iterable[str] | None = None, now_ms: int | None = None) -> Plan:
    """Where `spec` would move the stopped group on `topics` (default: every partition it has
    committed); nothing is changed."""
    kind, value = spec
    if kind not in KINDS:
        raise OperationError(f"unknown reset {kind!r}; one of {', '.join(KINDS)}")
    group_id = settings.topic(group)
    with contextlib.closing(clients.admin(settings)) as admin:
        refuse_if_active(admin, group_id)
        committed = admin.list_group_offsets({group_id: None})
        committed = committed.get(group_id, committed) if isinstance(committed, dict) else committed
        committed = {tp: (o.offset if hasattr(o, "offset") else int(o)) for tp, o in (committed or {}).items()}
    consumer = clients.consumer(settings, None)
    try:
        if topics is None or not list(topics):
            tps = sorted(committed, key=lambda tp: (tp.topic, tp.partition))
            if not tps:
                raise OperationError(f"group {group_id} has no committed offsets; name the topics (--topic)")
        else:
            tps = []
            for topic, partitions in parse_topics(topics).items():
                name = settings.topic(topic)
                have = consumer.partitions_for_topic(name)
                if not have:
                    raise OperationError(f"topic {name!r} does not exist")
                missing = sorted(set(partitions or ()) - have)
                if missing:
                    raise OperationError(f"topic {name!r} has no partition {', '.join(map(str, missing))} "
                                         f"(it has 0–{max(have)})")
                tps += [TopicPartition(name, p) for p in sorted(partitions or have)]
        earliest = consumer.beginning_offsets(tps)
        latest = consumer.end_offsets(tps)  # read_committed: the last stable offsets
        at_time: dict[TopicPartition, int | None] = {}
        if kind in ("datetime", "duration"):
            moment = value if kind == "datetime" else (now_ms or int(time.time() * 1000)) - value
            found = consumer.offsets_for_times({tp: moment for tp in tps})
            at_time = {tp: (None if found.get(tp) is None else found[tp].offset) for tp in tps}
    finally:
        consumer.close()

    moves = []
    for tp in tps:
        low, high, current = earliest[tp], latest[tp], committed.get(tp)
        if kind == "earliest":
            new = low
        elif kind == "latest":
            new = high
        elif kind == "offset":
            new = value
        elif kind == "shift":
            new = (current if current is not None else high) + value
        else:  # a time: the first offset at or after it; none after it: the end
            new = at_time[tp] if at_time[tp] is not None else high
        moves.append(Move(tp, current, min(max(new, low), high), low, high))
    return Plan(group_id, tuple(moves))


def execute(settings: Settings, plan: Plan) -> None:
    """Commit the plan's offsets for its group (refused if the group has become active)."""
    with contextlib.closing(clients.admin(settings)) as admin:
        refuse_if_active(admin, plan.group)
        result = admin.alter_group_offsets(plan.group, {m.tp: OffsetAndMetadata(m.new, "", -1) for m in plan.moves})
    errors = {tp: e for tp, e in result.items() if getattr(e, "errno", 0) != 0}
    if errors:
        raise OperationError(f"resetting {plan.group} failed: " + ", ".join(
            f"{tp.topic}[{tp.partition}]: {getattr(e, '__name__', e)}" for tp, e in errors.items()))
