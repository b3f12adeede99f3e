"""Errors every part of planshift can raise and the runtime understands."""

from __future__ import annotations


class PermanentError(Exception):
    """A record that no retry can make work (a migration the directory refuses, an
    upgrade id that belongs to another tenant): the runtime dead-letters it at once,
    after telling the consumer's `on_failure`, instead of retrying it."""


class OperationError(RuntimeError):
    """An operator's command cannot be carried out as asked (one line, exit code 1)."""
