"""The headers of a dead letter (CONTRACT.md §7), written once for every consumer.

Besides the record's own headers: dlq.source.topic, dlq.source.partition,
dlq.source.offset, dlq.source.timestamp, dlq.consumer.group, dlq.error.class,
dlq.error.message, dlq.error.stacktrace (as Kafka Connect's
`__connect.errors.exception.stacktrace`) and dlq.attempts.
"""

from __future__ import annotations

import traceback

from planshift.schema import InvalidEvent

MAX_MESSAGE = 8000
MAX_STACKTRACE = 16000  # the innermost frames are kept: that is where it failed


def error_message(exc: BaseException) -> str:
    if isinstance(exc, InvalidEvent):
        return "; ".join(map(str, exc.violations))
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return detail if str(exc) in detail else f"{exc}\n{detail}"


def stacktrace(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return text if len(text) <= MAX_STACKTRACE else "…" + text[-MAX_STACKTRACE:]


def dead_letter_headers(record, group: str, exc: BaseException, attempts: int) -> list[tuple[str, bytes]]:
    """The record's own headers, then where it came from, who gave up on it, and why."""
    return list(record.headers or []) + [
        ("dlq.source.topic", record.topic.encode()),
        ("dlq.source.partition", str(record.partition).encode()),
        ("dlq.source.offset", str(record.offset).encode()),
        ("dlq.source.timestamp", str(record.timestamp).encode()),
        ("dlq.consumer.group", group.encode()),
        ("dlq.error.class", type(exc).__name__.encode()),
        ("dlq.error.message", error_message(exc)[:MAX_MESSAGE].encode()),
        ("dlq.error.stacktrace", stacktrace(exc).encode()),
        ("dlq.attempts", str(attempts).encode()),
    ]
