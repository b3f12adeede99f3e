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


DECISION_BUSINESS_DAYS = 2  # the credit system decides within two business days of the request (§4)


def decision_due_by(request_day: date) -> date:
    """`credit_check.due_by`: when the credit system's decision is due."""
    return add_business_days(request_day, DECISION_BUSINESS_DAYS)


def add_business_days(day: date, days: int) -> date:
    """`days` business days (Monday–Friday) after `day`."""
    while days > 0:
        day += timedelta(days=1)
        if day.weekday() < 5:
            days -= 1
    return day
