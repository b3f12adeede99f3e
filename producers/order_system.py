"""The order-system side: a small client library that publishes `upgrade.requested`.

An upstream order system calls `UpgradeRequestPublisher.publish(event)`; the event is
completed with the envelope fields it lacks, validated against the schema *before*
anything is sent, and produced with the idempotent producer keyed by `tenant_id` (so a
retried send never duplicates a record, and all of a tenant's requests stay in order
on one partition). `publish_file` does the same for a JSON Lines file and reports
errors per line instead of stopping at the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from kafka.errors import AuthorizationError

from planshift.contract import Topic
from planshift.events import encode_json, encode_key, event_headers, with_envelope
from planshift.kafka import clients
from planshift.schema import InvalidEvent, Violation, validate
from planshift.settings import Settings


@dataclass
class PublishReport:
    sent: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, message)

    def describe(self) -> str:
        head = f"sent {self.sent} upgrade requests"
        if self.errors:
            head += f", {len(self.errors)} lines refused"
        return head


class UpgradeRequestPublisher:
    """Publishes validated `upgrade.requested` events with the idempotent producer."""

    def __init__(self, settings: Settings, **producer_overrides: Any):
        self.topic = settings.topic(Topic.UPGRADE_REQUESTED)
        self._producer = clients.producer(settings, **producer_overrides)
        self._headers = event_headers(Topic.UPGRADE_REQUESTED)

    def publish(self, event: dict[str, Any]):
        """Validate and send; raise InvalidEvent before sending anything invalid."""
        event = validate(Topic.UPGRADE_REQUESTED, with_envelope(event, Topic.UPGRADE_REQUESTED))
        return self._producer.send(
            self.topic,
            key=encode_key(event["tenant_id"]),
            value=encode_json(event),
            headers=self._headers,
        )

    def flush(self, timeout: float | None = 30) -> None:
        self._producer.flush(timeout)

    def close(self) -> None:
        self._producer.close()

    def __enter__(self) -> "UpgradeRequestPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(lines: Iterable[str]) -> Iterable[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, event or None, error or None) for each non-blank line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, None, f"not JSON: {exc.msg} at column {exc.colno}"
            continue
        if not isinstance(value, dict):
            yield number, None, f"not a JSON object but {type(value).__name__}"
            continue
        yield number, value, None


def publish_file(settings: Settings, path: Path, on_line: Callable[[], None] | None = None) -> PublishReport:
    report = PublishReport()
    pending: list[tuple[int, Any]] = []
    with UpgradeRequestPublisher(settings) as publisher, open(path, encoding="utf-8") as handle:
        for number, event, error in read_jsonl(handle):
            if on_line:
                on_line()
            if error is not None:
                report.errors.append((number, error))
                continue
            try:
                pending.append((number, publisher.publish(event)))
            except InvalidEvent as exc:
                report.errors.append((number, "; ".join(map(str, exc.violations))))
        publisher.flush()
        for number, future in pending:
            try:
                future.get(timeout=30)
                report.sent += 1
            except AuthorizationError:
                raise  # not this line's fault: this user may not write the topic at all (one line, cli)
            except Exception as exc:  # the broker refused or timed out: report the line
                report.errors.append((number, f"{type(exc).__name__}: {exc}"))
    report.errors.sort()
    return report


__all__ = ["UpgradeRequestPublisher", "publish_file", "PublishReport", "with_envelope", "InvalidEvent", "Violation"]
