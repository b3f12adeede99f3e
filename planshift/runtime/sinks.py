"""Sinks outside Kafka, flushed by the runtime when it commits (the archiver's lake).

A consumer whose output is not a Kafka topic still runs on the runtime: its handler
hands rows to a sink, and the sink writes them when the runtime commits (before the
offsets join the transaction, `checkpoint.py` step 3a), as Quix Streams' checkpoint
flushes its sinks. Reading resumes at the committed offsets, as for every consumer; the
sink knows what it already holds and skips those records, so a crash between its write
and the commit changes nothing.
"""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    topics: tuple[str, ...]  # contract topics whose records this sink takes

    def assigned(self, topic: str, partition: int) -> None:
        """`partition` of `topic` is read afresh from its committed offset: on assignment,
        and after an abort. What the sink buffered for it is void; what it holds already,
        it skips when read again."""

    def flush(self) -> None:
        """Write what is buffered, durably, before the runtime commits."""

    def discard(self, topic: str, partition: int) -> None:
        """Drop what is buffered for a partition this instance lost."""
