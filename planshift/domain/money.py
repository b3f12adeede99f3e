"""Money (CONTRACT.md §1, §4 Settlement): integer minor units in, Decimal in between,
one half-up rounding out. Days are clamped to the period, so a credit is never
negative and never above what was billed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

UNUSED_TIME = "UNUSED_TIME"
PREPAID_REMAINING = "PREPAID_REMAINING"


def round_half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


def prorate(amount_minor: int, part_days: int, whole_days: int) -> int:
    """round_half_up(amount × part / whole), computed exactly."""
    if whole_days <= 0:
        return 0
    return round_half_up(Decimal(amount_minor) * Decimal(part_days) / Decimal(whole_days))


@dataclass(frozen=True)
class Credit:
    amount_minor: int
    basis: str
    unused_days: int
    period_days: int
    period_start: date
    period_end: date
    forfeit_minor: int = 0


def unused_time_credit(billed_minor: int, period_start: date, period_end: date, effective: date) -> Credit:
    """Credit for the unused part of the current period [start, end)."""
    period_days = (period_end - period_start).days
    unused = clamp((period_end - effective).days, 0, max(period_days, 0))
    return Credit(prorate(billed_minor, unused, period_days), UNUSED_TIME, unused, period_days,
                  period_start, period_end)


def prepaid_credit(paid_minor: int, term_start: date, term_end: date, effective: date,
                   new_total_cost_minor: int) -> Credit:
    """The checkout rule: credit = min(remaining value, new plan's cost); the rest is forfeited."""
    term_days = (term_end - term_start).days
    remaining_days = clamp((term_end - effective).days, 0, max(term_days, 0))
    remaining = prorate(paid_minor, remaining_days, term_days)
    credit = min(remaining, new_total_cost_minor)
    return Credit(credit, PREPAID_REMAINING, remaining_days, term_days, term_start, term_end,
                  forfeit_minor=remaining - credit)


def subscription_credit(subscription: dict, effective: date, new_total_cost_minor: int) -> Credit:
    """The credit an upgrade away from `subscription` earns if it completes on `effective`."""
    prepaid = subscription.get("prepaid")
    if prepaid:
        return prepaid_credit(prepaid["paid_minor"], date.fromisoformat(prepaid["term_start"]),
                              date.fromisoformat(prepaid["term_end"]), effective, new_total_cost_minor)
    period = subscription["current_period"]
    return unused_time_credit(period["billed_minor"], date.fromisoformat(period["start"]),
                              date.fromisoformat(period["end"]), effective)
