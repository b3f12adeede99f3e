"""Logging: structlog, one JSON object per line on stderr, with bound context.

`configure()` is called once by the CLI. While the runtime handles a record it holds
it here (`hold_record`), and every line logged meanwhile carries its topic, partition
and offset and, once the record is decoded, its tenant_id and upgrade_id. Other
context is bound with `structlog.contextvars`. kafka-python's standard-library
loggers are routed through the same renderer.

Every line, planshift's and kafka-python's, passes `redact` last: credentials never reach
a log (values of password-, secret- and token-like keys, passwords in URLs and JAAS-style
`password=` settings, and every secret the settings hold, wherever it appears), and
neither do people: e-mail addresses (Microsoft 365 user ids are e-mail addresses) and the
values of user-id keys are replaced by a keyed hash, the same for the same person in
every process, so an operator can still follow one user through the logs without
reading who it is (`PLANSHIFT_LOG_HASH_KEY` keys the hash; set it to keep it unguessable).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
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


REDACTED = "[redacted]"
SECRET_KEY = re.compile(r"pass(word)?|secret|token|credential|authorization|jaas", re.I)
USER_KEYS = frozenset({"user", "user_id", "user_ids", "users", "users_missing", "users_swept", "holders",
                       "late_users", "email"})
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
URL_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", re.I)
PASSWORD_SETTING = re.compile(r"""(password[\"']?\s*[=:]\s*[\"']?)[^\"'\s;,}]+""", re.I)
_secrets: set[str] = set()
_hash_key = (os.environ.get("PLANSHIFT_LOG_HASH_KEY") or "planshift").encode()


def register_secret(value: str | None) -> None:
    """A secret (a password) that must never be logged, wherever it would appear."""
    if value and len(value) >= 4:
        _secrets.add(value)


def pseudonym(value: str, kind: str = "user") -> str:
    """A person's id as logs carry it: a keyed hash, stable across processes."""
    return f"{kind}:{hmac.new(_hash_key, value.encode(), hashlib.sha256).hexdigest()[:12]}"


def _clean(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "@" in text:
        text = URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", text)
        text = EMAIL.sub(lambda m: pseudonym(m.group(0).lower()), text)
    if "assword" in text or "ASSWORD" in text:
        text = PASSWORD_SETTING.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _people(value: Any) -> Any:
    if isinstance(value, str):
        return pseudonym(value.lower() if "@" in value else value)
    if isinstance(value, (list, tuple, set)):
        return [_people(v) for v in value]
    return value  # a count


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: (REDACTED if SECRET_KEY.search(str(k)) else _scrub(v)) for k, v in value.items()}
    return value


def redact(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor, last before rendering: no credentials, no people (module docstring)."""
    for key, value in list(event_dict.items()):
        if key in USER_KEYS:
            event_dict[key] = _people(value)
        elif SECRET_KEY.search(key) and value is not None:
            event_dict[key] = REDACTED
        elif isinstance(value, (str, list, tuple, dict)):
            event_dict[key] = _scrub(value)
        elif value is not None and not isinstance(value, (int, float, bool)):
            event_dict[key] = _clean(str(value))
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
        redact,
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
