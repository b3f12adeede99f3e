"""Dead letters after an incident (CONTRACT.md §7): list them, choose some, re-drive them.

`plan_redrive` reads a dead-letter topic and says, for each record, what a re-drive would
do with it: send it back to its source topic, or leave it — not chosen (by consumer
group, partition, offset range, time range or error class), re-driven before, or
belonging to an upgrade that is already final (rejected, failed or completed: a re-drive
could change nothing, so it is reported instead). It changes nothing. `execute_redrive`
sends the chosen records back, exactly once: each goes in one Kafka transaction with a
record of its re-drive on the compacted topic `dlq.redriven` (key `TOPIC:PARTITION:OFFSET`),
and a dead letter recorded there is never re-driven again by accident, whatever was
chosen before or after it, however often the command runs or crashes. A re-drive joins
the consumer group `planshift-redrive`, so a second one started meanwhile is refused.

Re-driving (like a replay, `offsets.py`) is safe because every planshift consumer is
idempotent: a repeated `upgrade_id` starts nothing, a repeated batch migrates nobody
twice, a repeated completion settles nothing twice, and the archive and reconciliation
count each event id once. Re-driven records reach every consumer of their source topic,
not only the one that failed.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from planshift.contract import CONSUMED_TOPICS, REDRIVEN_TOPIC, TERMINAL_STATUSES, Topic, dlq
from planshift.errors import OperationError
from planshift.kafka import clients
from planshift.kafka.reader import Record, iter_raw, iter_topic
from planshift.settings import Settings

REDRIVE_GROUP = "planshift-redrive"
COMMIT_EVERY = 500

REDRIVE, NOT_CHOSEN, DONE_BEFORE, FINAL, NO_SOURCE = (
    "re-drive", "not chosen", "re-driven before", "upgrade already final", "no source topic")


def dead_letter_topics() -> list[str]:
    return [dlq(t) for t in CONSUMED_TOPICS]


def dead_letters(settings: Settings, topic: str, timeout: float = 30.0) -> list[Record]:
    """Every committed record of a dead-letter topic (contract name, e.g. `upgrade.requested.dlq`)."""
    return list(iter_topic(settings, settings.topic(topic), timeout))


@dataclass(frozen=True)
class Selection:
    """Which dead letters to re-drive (every field: None for any)."""

    group: str | None = None  # the consumer group that gave up on it (contract name, e.g. planshift-intake)
    partition: int | None = None  # of the dead-letter topic
    from_offset: int | None = None  # of the dead-letter topic, inclusive
    to_offset: int | None = None  # inclusive
    since_ms: int | None = None  # when it was dead-lettered (the record's timestamp), inclusive
    until_ms: int | None = None  # exclusive
    error_classes: tuple[str, ...] = ()  # dlq.error.class, e.g. ConnectionError
    include_final: bool = False  # re-drive even when its upgrade is final (rolling forward by hand)

    def chooses(self, record, group_name: str | None) -> bool:
        headers = dict(record.headers or [])
        if group_name is not None and headers.get("dlq.consumer.group", b"").decode() != group_name:
            return False
        if self.partition is not None and record.partition != self.partition:
            return False
        if self.from_offset is not None and record.offset < self.from_offset:
            return False
        if self.to_offset is not None and record.offset > self.to_offset:
            return False
        if self.since_ms is not None and record.timestamp < self.since_ms:
            return False
        if self.until_ms is not None and record.timestamp >= self.until_ms:
            return False
        if self.error_classes and headers.get("dlq.error.class", b"").decode() not in self.error_classes:
            return False
        return True


@dataclass
class Candidate:
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    verdict: str
    upgrade: tuple[str, str] | None = None  # (tenant_id, upgrade_id) when the value names them
    status: str | None = None  # that upgrade's final status, for FINAL

    def header(self, name: str) -> str:
        return next((v.decode("utf-8", "replace") for k, v in self.headers if k == name), "?")

    def describe(self, topic: str) -> str:
        who = f" upgrade {self.upgrade[1]} of {self.upgrade[0]}" if self.upgrade else ""
        final = f" ({self.status})" if self.status else ""
        return (f"{topic}[{self.partition}]@{self.offset}  {self.header('dlq.consumer.group')}  "
                f"{self.header('dlq.error.class')}{who}: {self.verdict}{final}")


@dataclass
class RedrivePlan:
    topic: str  # the dead-letter topic's cluster name
    source_topics: set[str] = field(default_factory=set)
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def chosen(self) -> list[Candidate]:
        return [c for c in self.candidates if c.verdict == REDRIVE]

    def counts(self) -> Counter:
        return Counter(c.verdict for c in self.candidates)

    def describe(self, limit: int | None = 50) -> str:
        shown = [c for c in self.candidates if c.verdict != NOT_CHOSEN]
        lines = [c.describe(self.topic) for c in shown[:limit]]
        if limit is not None and len(shown) > limit:
            lines.append(f"… and {len(shown) - limit} more (--all to list them)")
        counts = self.counts()
        summary = ", ".join(f"{counts[v]} {v}" for v in (REDRIVE, DONE_BEFORE, FINAL, NO_SOURCE, NOT_CHOSEN)
                            if counts[v])
        lines.append(f"{self.topic}: {len(self.candidates)} dead letters: {summary or 'none'}")
        return "\n".join(lines)


@dataclass
class RedriveReport:
    topic: str
    redriven: int
    skipped: int  # left: not chosen, re-driven before, final or without a source

    def describe(self) -> str:
        text = f"{self.topic}: re-drove {self.redriven} dead letters"
        return text + (f", left {self.skipped}" if self.skipped else "")


def _redriven(settings: Settings, timeout: float) -> set[str]:
    """The dead letters re-driven before (keys of `dlq.redriven`)."""
    try:
        return {r.key.decode() for r in iter_raw(settings, settings.topic(REDRIVEN_TOPIC), timeout)
                if r.key is not None and r.value is not None}
    except LookupError:
        raise OperationError(f"topic {settings.topic(REDRIVEN_TOPIC)!r} does not exist; "
                             "run 'planshift topics create'") from None


def _upgrade_of(value: bytes | None) -> tuple[str, str] | None:
    try:
        event = json.loads(value) if value is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(event, dict) and isinstance(event.get("tenant_id"), str) and isinstance(event.get("upgrade_id"), str):
        return event["tenant_id"], event["upgrade_id"]
    return None


def _final_statuses(settings: Settings, upgrades: set[tuple[str, str]], timeout: float) -> dict[tuple[str, str], str]:
    """The final status (upgrade.status, read_committed) of each of `upgrades` that has one."""
    final: dict[tuple[str, str], str] = {}
    if not upgrades:
        return final
    for record in iter_topic(settings, settings.topic(Topic.UPGRADE_STATUS), timeout):
        status = record.value if isinstance(record.value, dict) else {}
        key = (status.get("tenant_id"), status.get("upgrade_id"))
        if key in upgrades and status.get("status") in TERMINAL_STATUSES:
            final[key] = status["status"]
    return final


def _key(topic: str, candidate: Candidate) -> str:
    return f"{topic}:{candidate.partition}:{candidate.offset}"


def refuse_if_redriving(settings: Settings) -> None:
    from planshift.ops.offsets import members

    with contextlib.closing(clients.admin(settings)) as admin:
        active = members(admin, settings.topic(REDRIVE_GROUP))
    if active:
        raise OperationError(f"another re-drive is running (group {settings.topic(REDRIVE_GROUP)}: "
                             f"{', '.join(active)}); let it finish first")


def plan_redrive(settings: Settings, topic: str, selection: Selection = Selection(),
                 timeout: float = 60.0) -> RedrivePlan:
    """What a re-drive of `topic` (contract name, e.g. `upgrade.requested.dlq`) would do with each record."""
    if not topic.endswith(".dlq"):
        raise OperationError(f"{topic} is not a dead-letter topic (they end in .dlq)")
    refuse_if_redriving(settings)
    name = settings.topic(topic)
    group_name = None if selection.group is None else settings.topic(selection.group)
    done = _redriven(settings, timeout)
    plan = RedrivePlan(name)
    try:
        records = list(iter_raw(settings, name, timeout))
    except LookupError:
        raise OperationError(f"topic {name!r} does not exist") from None
    for r in records:
        headers = list(r.headers or [])
        candidate = Candidate(r.partition, r.offset, r.timestamp, r.key, r.value, headers, REDRIVE,
                              _upgrade_of(r.value))
        source = dict(headers).get("dlq.source.topic")
        if not selection.chooses(r, group_name):
            candidate.verdict = NOT_CHOSEN
        elif _key(name, candidate) in done:
            candidate.verdict = DONE_BEFORE
        elif source is None:
            candidate.verdict = NO_SOURCE
        else:
            plan.source_topics.add(source.decode())
        plan.candidates.append(candidate)
    if not selection.include_final:
        final = _final_statuses(settings, {c.upgrade for c in plan.chosen if c.upgrade}, timeout)
        for candidate in plan.chosen:
            if candidate.upgrade in final:
                candidate.verdict, candidate.status = FINAL, final[candidate.upgrade]
    return plan


def execute_redrive(settings: Settings, plan: RedrivePlan, timeout: float = 60.0,
                    progress: Any = None) -> RedriveReport:
    """Send the plan's chosen dead letters back to their source topics, each once."""
    refuse_if_redriving(settings)
    # A member of the re-drive group while it runs, so that a second re-drive is refused.
    lock = clients.consumer(settings, settings.topic(REDRIVE_GROUP), plan.topic)
    producer = None
    try:
        joined = time.monotonic() + 10
        while not lock.assignment() and time.monotonic() < joined:
            lock.poll(timeout_ms=100)
        producer = clients.producer(settings, transactional_id=f"{settings.topic(REDRIVE_GROUP)}-{plan.topic}")
        producer.init_transactions()  # fences an earlier run of this re-drive and aborts what it left open
        done = _redriven(settings, timeout)  # again: what a run before this one committed counts
        marks = settings.topic(REDRIVEN_TOPIC)
        sent = 0
        open_ = False
        for candidate in plan.chosen:
            key = _key(plan.topic, candidate)
            if key in done:
                candidate.verdict = DONE_BEFORE
                continue
            if not open_:
                producer.begin_transaction()
                open_ = True
            source = dict(candidate.headers)["dlq.source.topic"].decode()
            headers = [(k, v) for k, v in candidate.headers if not k.startswith("dlq.")]
            headers.append(("dlq.redriven.from", f"{plan.topic}:{candidate.partition}:{candidate.offset}".encode()))
            producer.send(source, key=candidate.key, value=candidate.value, headers=headers)
            producer.send(marks, key=key.encode(), value=json.dumps({
                "redriven_at": int(time.time() * 1000), "to": source,
                "error_class": candidate.header("dlq.error.class")}).encode())
            sent += 1
            if progress is not None:
                progress(1)
            if sent % COMMIT_EVERY == 0:
                producer.commit_transaction()
                open_ = False
        if open_:
            producer.commit_transaction()
    finally:
        if producer is not None:
            producer.close(timeout=10)
        lock.close()
    return RedriveReport(plan.topic, sent, len(plan.candidates) - sent)


def redrive(settings: Settings, topic: str, group: str | None = None, timeout: float = 60.0,
            selection: Selection | None = None) -> RedriveReport:
    """Plan and execute at once (tests, scripts): every chosen dead letter not re-driven before."""
    selection = selection or Selection(group=group)
    return execute_redrive(settings, plan_redrive(settings, topic, selection, timeout), timeout)
