"""Archiver (`planshift run archive`): the business events into the Parquet lake, exactly once.

Reads `upgrade.requested`, `upgrade.status`, `billing.switch`, `credit.issued` and
`invoice.issued` (`read_committed`) in a consumer group and writes them to the lake
(`planshift/lake.py`). Exactly once without Kafka transactions, because the output is
files: progress lives in the lake's manifests, not in committed offsets. When a
partition is assigned, its leftovers of a crashed flush are removed and reading resumes
after the last offset a manifest covers; a flush writes its files, then its manifest,
each atomically (write aside, then rename). So a record is in the lake once, and no
reader ever sees half a file. Offsets are also committed to the group after each flush,
for monitoring only.

A record that is not JSON or breaks its schema is not archived; it goes to its
dead-letter topic with the headers of CONTRACT.md §7, once: at start the archiver reads
which records it has dead-lettered before, and skips them if a crash makes it read them again.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.structs import OffsetAndMetadata

from planshift import kafka_clients
from planshift.contract import Topic, dlq
from planshift.domain.validity import check_request
from planshift.deadletters import dead_letter_headers
from planshift.lake import ARCHIVED_TOPICS, Lake, event_date, to_row
from planshift.logs import get_logger
from planshift.runtime.processor import Stoppable
from planshift.schema import InvalidEvent, parse
from planshift.settings import Settings

log = get_logger(__name__)

GROUP_ID = "planshift-archive"
# Rules beyond the schema (CONTRACT.md §3 r2) that intake applies too: what intake refuses
# as INVALID_REQUEST is not archived either, so no reconciliation trips over it.
VALIDITY = {Topic.UPGRADE_REQUESTED: check_request}


class Archiver(Stoppable):
    def __init__(self, settings: Settings, flush_every: int = 20_000, flush_interval_s: float = 5.0,
                 instance: str = "0"):
        self.settings = settings
        self.lake = Lake.for_settings(settings)
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.instance = instance
        self._topics = {settings.topic(t): t for t in ARCHIVED_TOPICS}
        self._buffers: dict[TopicPartition, list[dict[str, Any]]] = defaultdict(list)
        self._buffered = 0
        self._last_flush = time.monotonic()
        self._stop = threading.Event()
        self.archived = 0
        self.dead_letters = 0
        self.consumer = None
        self._dlq = None

    def run(self, until=None) -> None:
        self.consumer = kafka_clients.consumer(
            self.settings, self.settings.topic(GROUP_ID), group_instance_id=f"{self.settings.topic(GROUP_ID)}-{self.instance}",
            session_timeout_ms=15_000, max_poll_records=5000)
        self._dlq = kafka_clients.producer(self.settings)
        self._dead = self._already_dead_lettered()
        self.consumer.subscribe(list(self._topics), listener=_Listener(self))
        try:
            while not self._stop.is_set():
                for tp, records in self.consumer.poll(timeout_ms=500).items():
                    for record in records:
                        self._take(tp, record)
                if self._buffered >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_interval_s:
                    self.flush()
                if until is not None and until(self):
                    break
        finally:
            self.flush()
            self.consumer.close()
            self._dlq.close()

    def _take(self, tp: TopicPartition, record) -> None:
        topic = self._topics[tp.topic]
        try:
            event = parse(topic, record.value)
            check = VALIDITY.get(topic)
            if check is not None:
                check(event)  # an impossible request (2026-11-31) never reaches finance's lake
        except InvalidEvent as exc:
            self._dead_letter(topic, record, exc)
            return
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        row = to_row(topic, record.partition, record.offset, record.timestamp, key, event, record.value.decode())
        row["_event_date"] = event_date(event)
        self._buffers[tp].append(row)
        self._buffered += 1

    def _already_dead_lettered(self) -> set[tuple[str, int, int]]:
        """(topic, partition, offset) this archiver dead-lettered before: a record read
        again after a crash (its flush never reached a manifest) is not sent twice."""
        from planshift.topic_reader import iter_topic

        group = self.settings.topic(GROUP_ID).encode()
        seen = set()
        for topic in self._topics.values():
            try:
                for r in iter_topic(self.settings, self.settings.topic(dlq(topic))):
                    if r.headers.get("dlq.consumer.group") == group:
                        seen.add((r.headers["dlq.source.topic"].decode(), int(r.headers["dlq.source.partition"]),
                                  int(r.headers["dlq.source.offset"])))
            except LookupError:
                continue
        return seen

    def _dead_letter(self, topic: str, record, exc: InvalidEvent) -> None:
        if (record.topic, record.partition, record.offset) in self._dead:
            return
        self._dead.add((record.topic, record.partition, record.offset))
        headers = dead_letter_headers(record, self.settings.topic(GROUP_ID), exc, attempts=1)
        self._dlq.send(self.settings.topic(dlq(topic)), key=record.key, value=record.value, headers=headers)
        self.dead_letters += 1

    def flush(self, only: set[TopicPartition] | None = None) -> None:
        """Write buffered rows to the lake, then commit the offsets (for monitoring)."""
        self._dlq.flush()  # dead letters first: a record is never lost between the two
        offsets = {}
        for tp in list(self._buffers):
            if only is not None and tp not in only:
                continue
            rows = self._buffers.pop(tp)
            if not rows:
                continue
            manifest = self.lake.write(self._topics[tp.topic], tp.partition, rows)
            offsets[tp] = OffsetAndMetadata(manifest.last + 1, "", -1)
            self.archived += len(rows)
            self._buffered -= len(rows)
        self._last_flush = time.monotonic()
        if offsets:
            try:
                self.consumer.commit(offsets)
            except Exception as exc:  # noqa: BLE001 - monitoring only; the lake holds the truth
                log.warning("offset commit failed (the lake's manifests are the progress)", error=repr(exc))

    def _on_assigned(self, assigned) -> None:
        for tp in assigned:
            topic = self._topics[tp.topic]
            removed = self.lake.remove_orphans(topic, tp.partition)
            if removed:
                log.warning("removed files of an unfinished flush", topic=topic, partition=tp.partition,
                            files=[str(p) for p in removed])
            position = self.lake.next_offset(topic, tp.partition)
            if position is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, position)

    def _on_revoked(self, revoked) -> None:
        self.flush(only=set(revoked))


class _Listener(ConsumerRebalanceListener):
    def __init__(self, archiver: Archiver):
        self.archiver = archiver

    def on_partitions_revoked(self, revoked):
        if revoked:
            self.archiver._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        if assigned:
            self.archiver._on_assigned(assigned)

    def on_partitions_lost(self, lost):
        for tp in lost:
            rows = self.archiver._buffers.pop(tp, [])
            self.archiver._buffered -= len(rows)


def archiver(settings: Settings, instance: str = "0", **options: Any) -> Archiver:
    return Archiver(settings, instance=instance, **options)
