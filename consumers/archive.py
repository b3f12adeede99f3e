"""Archiver (`planshift run archive`): the business events into the Parquet lake, exactly once.

Reads `upgrade.requested`, `upgrade.status`, `billing.switch`, `credit.issued` and
`invoice.issued` on the runtime like every other consumer, and hands each event to
`LakeSink`, which the runtime flushes when it commits (`planshift/runtime/checkpoint.py`
step 3a): the lake's files, then their manifest, each written atomically (aside, then
renamed), then the offsets and dead letters commit in one transaction.

Exactly once, whatever the crashes: when a partition is assigned, the leftovers of a
crashed flush (files no manifest names) are removed, reading resumes at the group's
committed offset, and rows the lake already holds are skipped. So a crash between a flush and its commit reads those records
again without archiving them twice, and a record is in the lake once. Replaying the
archive group (`planshift replay planshift-archive --to-earliest --execute`) re-archives nothing; to
rebuild a lost lake, replay the archive group to the start.

A record that is not JSON, breaks its schema or is impossible (CONTRACT.md §3 r2, the
checks intake makes) is not archived: the runtime sends it to its dead-letter topic with
the headers of §7, in the transaction that commits its offset, so once.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from planshift.contract import Topic
from planshift.domain.validity import check_request
from planshift.logs import get_logger
from planshift.runtime import Context, ProcessorConfig, Source, StreamProcessor
from planshift.settings import Settings
from planshift.storage.lake import ARCHIVED_TOPICS, Lake, event_date, to_row

log = get_logger(__name__)

GROUP_ID = "planshift-archive"
# Rules beyond the schema (CONTRACT.md §3 r2) that intake applies too: what intake refuses
# as INVALID_REQUEST is not archived either, so no reconciliation trips over it.
VALIDITY = {Topic.UPGRADE_REQUESTED: check_request}


class LakeSink:
    """Rows buffered per topic partition, written to the lake at each commit."""

    topics = ARCHIVED_TOPICS

    def __init__(self, lake: Lake):
        self.lake = lake
        self._rows: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        self._next: dict[tuple[str, int], int] = {}  # the first offset the lake does not hold yet
        self.archived = 0

    def add(self, ctx: Context, event: dict[str, Any]) -> None:
        where = (ctx.topic, ctx.partition)
        if ctx.offset < self._next.get(where, 0):
            return  # in the lake already: read again after a crash between a flush and its commit
        row = to_row(ctx.topic, ctx.partition, ctx.offset, ctx.timestamp, ctx.key, event, ctx.value.decode())
        row["_event_date"] = event_date(event)
        self._rows[where].append(row)

    def assigned(self, topic: str, partition: int) -> None:
        self.discard(topic, partition)
        removed = self.lake.remove_orphans(topic, partition)
        if removed:
            log.warning("removed files of an unfinished flush", topic=topic, partition=partition,
                        files=[str(p) for p in removed])
        # Reading resumes at the committed offset, past every record of a committed
        # transaction (dead letters included); the lake may hold more: a flush whose
        # commit never came.
        self._next[(topic, partition)] = self.lake.next_offset(topic, partition) or 0

    def flush(self) -> None:
        for (topic, partition), rows in list(self._rows.items()):
            if rows:
                manifest = self.lake.write(topic, partition, rows)
                self._next[(topic, partition)] = manifest.last + 1
                self.archived += len(rows)
        self._rows.clear()

    def discard(self, topic: str, partition: int) -> None:
        self._rows.pop((topic, partition), None)


def config(settings: Settings, sink: LakeSink, instance: str = "0", flush_every: int = 20_000,
           flush_interval_s: float = 5.0) -> ProcessorConfig:
    return ProcessorConfig(
        group_id=GROUP_ID,
        sources=tuple(Source(topic, sink.add, check=VALIDITY.get(topic)) for topic in ARCHIVED_TOPICS),
        stateful=False,
        sinks=(sink,),
        commit_every=flush_every,
        commit_interval_ms=int(flush_interval_s * 1000),
        commit_when_idle=False,
        max_poll_records=5000,
        instance=instance,
    )


def archiver(settings: Settings, instance: str = "0", flush_every: int = 20_000,
             flush_interval_s: float = 5.0) -> StreamProcessor:
    """The archiver as a processor; `.sink` is its `LakeSink` (`.sink.archived`: rows written)."""
    sink = LakeSink(Lake.for_settings(settings))
    processor = StreamProcessor(settings, config(settings, sink, instance, flush_every, flush_interval_s))
    processor.sink = sink
    return processor
