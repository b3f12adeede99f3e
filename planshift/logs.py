"""Logging: structlog, one JSON object per line on stderr, with bound context.

`configure()` is called once by the CLI. Context such as tenant_id, upgrade_id,
topic, partition and offset is bound with `structlog.contextvars.bound_contextvars`
by the runtime while a record is handled, so every line logged meanwhile carries it.
kafka-python's standard-library loggers are routed through the same renderer.
"""

from __future__ import annotations

import logging
import sys

import structlog

_configured = False


def configure(level: str = "INFO", stream=None, kafka_level: str | None = None) -> None:
    global _configured
    stream = stream or sys.stderr
    shared = [
        structlog.contextvars.merge_contextvars,
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
