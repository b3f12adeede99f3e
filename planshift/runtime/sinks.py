"""Sinks outside Kafka, flushed by the runtime when it commits (the archiver's lake).

A consumer whose output is not a Kafka topic still runs on the runtime: its handler
hands rows to a sink, and the sink writes them when the runtime commits (before the
offsets join the transaction, `checkpoint.py` step 3a). The sink, not the committed
offsets alone, says where reading resumes — it knows what it already holds — and it
skips records it holds already, so a crash between its write and the commit changes
nothing (Quix Streams' sinks work the same way).
"""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    topics: tuple[str, ...]  # contract topics whose reading position this sink owns

    def resume(self, topic: str, partition: int, committed: int | None) -> int | None:
        """Where reading `partition` of `topic` resumes (None: the beginning), given the
        group's committed offset. Called on assignment and after an abort: what the sink
        buffered for the partition and not yet flushed is dropped."""

    def flush(self) -> None:
        """Write what is buffered, durably, before the runtime commits."""

    def discard(self, topic: str, partition: int) -> None:
        """Drop what is buffered for a partition this instance lost."""
