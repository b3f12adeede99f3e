"""`planshift` — the command line (CONTRACT.md §8), one module per command group.

Exit codes: 0 done, 1 the command failed (the broker is unreachable, a file is bad …),
2 a bad argument (one line on stderr). The CLI is the outermost edge: it reads the
settings once and hands them to the parts it runs, and the processes it starts are the
only ones whose garbage collector and allocator it tunes (`cli/tuning.py`).
"""

from __future__ import annotations

import argparse
from typing import Sequence

from cli import (
    acls,
    broker,
    demo,
    directory,
    dlq,
    health,
    preview,
    publish,
    reconcile,
    replay,
    run,
    serve,
    simulate,
    status,
    tail,
    topics,
)
from cli.args import fail
from planshift import __version__
from planshift.settings import Settings, SettingsError

GROUPS = (broker, acls, topics, publish, tail, run, simulate, reconcile, dlq, replay, status, serve, preview, directory, health, demo)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> Parser:
    parser = Parser(prog="planshift",
                    description="SaaS subscription-plan upgrades over Apache Kafka, settled exactly once.")
    parser.add_argument("--version", action="version", version=f"planshift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return dispatch(args)


def dispatch(args: argparse.Namespace) -> int:
    from planshift import logs

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return fail(str(exc), 2)
    if getattr(args, "metrics_port", None) is not None:
        import dataclasses

        settings = dataclasses.replace(settings, metrics_port=args.metrics_port)
    # Long-running processes (`run …`) log at the configured level; one-shot commands
    # print their own results and keep the log to warnings, and leave kafka-python's
    # reconnect chatter out (an unreachable broker is reported once, below).
    logs.register_secret(settings.sasl_password)
    if settings.directory_url and "@" in settings.directory_url:
        logs.register_secret(settings.directory_url.split("://", 1)[-1].rsplit("@", 1)[0].partition(":")[2])
    if getattr(args, "long_running", False):
        logs.configure(settings.log_level)
    else:
        logs.configure("WARNING", kafka_level="CRITICAL")
    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    from planshift.catalogue import CatalogueError
    from kafka.errors import AuthorizationError

    from planshift.kafka.clients import BrokerRefused, BrokerUnreachable
    from planshift.ops.broker import BrokerError
    from planshift.errors import OperationError
    from planshift.storage.directory import DirectoryError

    try:
        if getattr(args, "needs_broker", True):
            from planshift.kafka.clients import require_broker

            require_broker(settings)
        return args.handler(args, settings)
    except BrokerRefused as exc:
        return fail(str(exc))
    except AuthorizationError as exc:
        return fail(not_authorized(settings, exc))
    except (KafkaConnectionError, KafkaTimeoutError):
        return fail(_why_unanswered(settings))
    except (BrokerError, BrokerUnreachable, CatalogueError, DirectoryError, OperationError, LookupError, TimeoutError, KafkaError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130


def not_authorized(settings: Settings, exc: Exception) -> str:
    """An ACL said no: who asked, for what, and where each role's rights are listed."""
    who = f"User:{settings.sasl_username}" if settings.sasl_username else "this client"
    what = {"TopicAuthorizationFailedError": "this topic", "GroupAuthorizationFailedError": "this consumer group",
            "TransactionalIdAuthorizationFailedError": "this transactional id",
            "ClusterAuthorizationFailedError": "this cluster operation"}.get(type(exc).__name__, "this")
    detail = str(exc).split(": ", 1)[-1] if ": " in str(exc) else type(exc).__name__
    return f"not authorized: {who} may not use {what} ({detail}); each role's rights: 'planshift acls list'"


def _why_unanswered(settings: Settings) -> str:
    """A call timed out: ask again, the way that says why (the broker went away, or it
    refuses this client: kafka-python only logs that, then times out)."""
    from planshift.kafka.clients import BrokerRefused, BrokerUnreachable, require_broker

    try:
        require_broker(settings)
    except (BrokerRefused, BrokerUnreachable) as exc:
        return str(exc)
    except Exception:  # noqa: BLE001 - the diagnosis itself timed out: say what is known
        pass
    return (f"no Kafka broker answers at {settings.bootstrap_servers} in time "
            "(start one with 'planshift broker start')")
