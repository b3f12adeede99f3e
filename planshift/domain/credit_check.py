"""The credit-check gate (CONTRACT.md §4): paying by invoice, or a cost at the threshold or above."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, Mapping

INVOICE_PAYMENT = "INVOICE_PAYMENT"
COST_THRESHOLD = "COST_THRESHOLD"


def credit_check_reason(request: Mapping[str, Any], threshold_minor: int) -> str | None:
    if request["payment_method"] == "invoice":
        return INVOICE_PAYMENT
    if request["new_total_cost_minor"] >= threshold_minor:
        return COST_THRESHOLD
    return None


def add_business_days(day: date, days: int) -> date:
    """`days` business days (Monday–Friday) after `day`."""
    while days > 0:
        day += timedelta(days=1)
        if day.weekday() < 5:
            days -= 1
    return day
