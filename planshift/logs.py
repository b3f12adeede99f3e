"""Logging: structlog, one JSON object per line on stderr, with bound context.

`configure()` is called once by the CLI. While the runtime handles a record it holds
it here (`hold_record`), and every line logged meanwhile carries its topic, partition
and offset and, once the record is decoded, its tenant_id and upgrade_id. Other
context is bound with `structlog.contextvars`. kafka-python's standard-library
loggers are routed through the same renderer.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import structlog

_configured = False

# (record, decoded event) of the record in hand, per thread. One `set` per record: the
# fields are read only when a line is written, where binding five contextvars per
# record cost a few microseconds on every record, logged or not.
_in_hand: ContextVar[tuple[Any, Any] | None] = ContextVar("planshift_record_in_hand", default=None)


def hold_record(record: Any, event: Any = None) -> None:
    """The record being handled now (a ConsumerRecord and its decoded event), or None."""
    _in_hand.set(None if record is None else (record, event))


def merge_record(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the held record's coordinates and owner, unless given."""
    held = _in_hand.get()
    if held is not None:
        record, event = held
        event_dict.setdefault("topic", record.topic)
        event_dict.setdefault("partition", record.partition)
        event_dict.setdefault("offset", record.offset)
        if isinstance(event, dict):
            for name in ("tenant_id", "upgrade_id"):
                if event.get(name) is not None:
                    event_dict.setdefault(name, event[name])
    return event_dict


def configure(level: str = "INFO", stream=None, kafka_level: str | None = None) -> None:
    global _configured
    stream = stream or sys.stderr
    shared = [
        structlog.contextvars.merge_contextvars,
        merge_record,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(sort_keys=False, default=str),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python is chatty at INFO (connection and coordinator churn); keep its
    # warnings and errors, which are the lines an operator needs.
    logging.getLogger("kafka").setLevel(kafka_level or max(logging.WARNING, logging.getLevelName(level)))
    _configured = True


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
