"""Argument types shared by the commands: a bad value is one line and exit code 2."""

from __future__ import annotations

import argparse
import sys


def fail(message: str, code: int = 1) -> int:
    print(f"planshift: error: {message}", file=sys.stderr)
    return code


def _whole(text: str, what: str, low: int, high: int | None, out_of_range: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(out_of_range.format(value=value))
    return value


def positive_int(text: str) -> int:
    return _whole(text, "a whole number", 1, None, "{value} must be at least 1")


def port(text: str) -> int:
    return _whole(text, "a port number", 0, 65535, "{value} is not a port number (0-65535; 0: any free port)")


METRICS_PORT_HELP = ("serve /metrics, /healthz and /readyz on this port (default PLANSHIFT_METRICS_PORT; "
                     "unset: not served; 0: any free port, logged)")


def metrics_option(parser: argparse.ArgumentParser, help: str = METRICS_PORT_HELP) -> None:
    parser.add_argument("--metrics-port", type=port, default=None, metavar="PORT", help=help)


def fault(text: str) -> tuple[str, float]:
    from producers.billing import FAULTS, HARMLESS

    name, _, rate = text.partition("=")
    if name not in FAULTS + HARMLESS:
        raise argparse.ArgumentTypeError(f"unknown fault {name!r}; known: {', '.join(FAULTS + HARMLESS)}")
    try:
        value = float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the rate must be a number in [0, 1]") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the rate must be in [0, 1]")
    return name, value


def timestamp(text: str):
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def duration_ms(text: str) -> int:
    """A duration as kafka-consumer-groups takes it (ISO 8601: PT1H, P2D, PT30M, P1DT12H) or
    shortly (90s, 30m, 2h, 1d) → milliseconds."""
    import re

    short = re.fullmatch(r"(\d+)([smhd])", text)
    if short:
        return int(short[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[short[2]] * 1000
    iso = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", text.upper())
    if not iso or text.upper() in ("P", "PT") or text.upper().endswith("T"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. PT1H, P2D, 30m, 2h)")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in iso.groups())
    return int(((days * 24 + hours) * 60 + minutes) * 60_000 + seconds * 1000)


def run_date(text: str):
    from datetime import date, datetime, timedelta, timezone

    today = datetime.now(timezone.utc).date()
    if text == "today":
        return today
    if text == "yesterday":
        return today - timedelta(days=1)
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD, today, yesterday)") from None
