"""Global tables: a compacted topic read whole by every instance (like a Kafka Streams GlobalKTable).

`service.health` is one: every intake instance needs the health of every service,
whatever partitions it owns. The table reads the topic `read_committed` to its end at
start, then takes in updates between polls of the main loop.
"""

from __future__ import annotations

from typing import Any

from kafka import TopicPartition

from planshift.kafka import clients
from planshift.kafka.reader import read_new, read_to_end
from planshift.logs import get_logger
from planshift.schema import InvalidEvent, parse
from planshift.settings import Settings

log = get_logger(__name__)


class GlobalTable:
    def __init__(self, settings: Settings, topic: str, schema: str | None = None):
        self.settings = settings
        self.topic = topic
        self.schema = schema or topic.removeprefix(settings.topic_prefix)
        self.values: dict[str, Any] = {}
        self._consumer = None

    def bootstrap(self, timeout: float = 60.0) -> None:
        self._consumer = clients.consumer(self.settings, None)
        partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise LookupError(f"topic {self.topic!r} does not exist; run 'planshift topics create'")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        for record in read_to_end(self._consumer, tps, timeout, f"the table {self.topic}"):
            self._take(record)

    def refresh(self) -> None:
        if self._consumer is not None:
            for record in read_new(self._consumer):
                self._take(record)

    def _take(self, r) -> None:
        key = r.key.decode() if r.key is not None else None
        if r.value is None:
            self.values.pop(key, None)
            return
        try:
            self.values[key] = parse(self.schema, r.value)
        except InvalidEvent as exc:
            # The record stays on the compacted topic; it is skipped, not lost.
            log.warning("invalid table record skipped", topic=self.topic, offset=r.offset, key=key, error=str(exc))

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
