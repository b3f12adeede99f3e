"""Validity beyond the schema (CONTRACT.md §3, r2): a request that matches its schema can
still be impossible, and is then `INVALID_REQUEST`, naming the field.

- every date is a real calendar date (the schema's pattern lets 2026-11-31 through);
- `current_period.start` < `end`, a prepaid `term_start` < `term_end`;
- `licenses` ≥ 1;
- `target_subscription_id` is new (created at checkout): neither the source nor any
  subscription of the tenant's snapshot — else migration would strip the users of their
  licences or overwrite another subscription's;
- `occurred_at` is a real moment (any offset: planshift works in its UTC day).
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any, Mapping

from planshift.schema import InvalidEvent, Violation


def utc_moment(moment: str) -> datetime:
    """An RFC 3339 timestamp with any offset, in UTC (one without an offset is taken as UTC)."""
    parsed = datetime.fromisoformat(moment.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def utc_day(moment: str) -> date:
    """The UTC day of an RFC 3339 timestamp with any offset (`…T22:30:00-05:00` is the next day in UTC)."""
    return utc_moment(moment).date()


def _day(value: Any, path: str, found: list[Violation]) -> date | None:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        found.append(Violation(path, f"{value!r} is not a calendar date"))
        return None


def request_violations(request: Mapping[str, Any]) -> list[Violation]:
    """What makes a schema-valid `upgrade.requested` impossible; empty when it is valid."""
    found: list[Violation] = []
    try:
        utc_day(request["occurred_at"])
    except ValueError:
        found.append(Violation("$.occurred_at", f"{request['occurred_at']!r} is not a real moment"))
    if request["licenses"] < 1:
        found.append(Violation("$.licenses", "must be at least 1"))
    target = request["target_subscription_id"]
    if target == request["source_subscription_id"]:
        found.append(Violation("$.target_subscription_id", "must differ from source_subscription_id "
                                                           "(the target is the subscription created at checkout)"))
    for i, sub in enumerate(request["tenant"]["subscriptions"]):
        path = f"$.tenant.subscriptions[{i}]"
        if sub["subscription_id"] == target and target != request["source_subscription_id"]:
            found.append(Violation("$.target_subscription_id", f"names the tenant's existing subscription "
                                                               f"{path} ({sub['sku']}); the target must be new"))
        period = sub["current_period"]
        start = _day(period["start"], f"{path}.current_period.start", found)
        end = _day(period["end"], f"{path}.current_period.end", found)
        if start and end and not start < end:
            found.append(Violation(f"{path}.current_period", f"start {start} must be before end {end}"))
        prepaid = sub.get("prepaid")
        if prepaid:
            term_start = _day(prepaid["term_start"], f"{path}.prepaid.term_start", found)
            term_end = _day(prepaid["term_end"], f"{path}.prepaid.term_end", found)
            if term_start and term_end and not term_start < term_end:
                found.append(Violation(f"{path}.prepaid", f"term_start {term_start} must be before "
                                                          f"term_end {term_end}"))
    return found


def check_request(request: Mapping[str, Any]) -> None:
    """Raise InvalidEvent for an impossible request (the runtime's `Source.check`)."""
    found = request_violations(request)
    if found:
        raise InvalidEvent("upgrade.requested", found)
