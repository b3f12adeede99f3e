"""Realistic `upgrade.requested` events for demos, tests and benchmarks."""

from __future__ import annotations

import calendar
from datetime import date, timedelta
from typing import Any


def month_period(day: date) -> tuple[date, date]:
    start = day.replace(day=1)
    end = start + timedelta(days=calendar.monthrange(start.year, start.month)[1])
    return start, end


def upgrade_request(
    tenant_id: str = "contoso",
    upgrade_id: str | None = None,
    *,
    today: date | None = None,
    source_sku: str = "M365_BUSINESS_STANDARD",
    target_sku: str = "M365_BUSINESS_PREMIUM",
    licenses: int = 120,
    licenses_purchased: int | None = None,
    billed_minor: int = 150000,
    new_total_cost_minor: int = 264000,
    currency: str = "EUR",
    payment_method: str = "card",
    status: str = "active",
    plan_type: str = "commercial",
    unpaid_balance_minor: int = 0,
    add_ons: list[str] | None = None,
    prepaid: dict[str, Any] | None = None,
    prepaid_forfeit_acknowledged: bool = False,
    extra_subscriptions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One complete request in the shape of CONTRACT.md's appendix; every field overridable."""
    today = today or date.today()
    start, end = month_period(today)
    upgrade_id = upgrade_id or f"ord-{tenant_id}-{today:%Y%m%d}"
    source_id = f"{tenant_id}-sub-{source_sku.lower()}"
    return {
        "tenant_id": tenant_id,
        "occurred_at": f"{today.isoformat()}T09:30:00Z",
        "upgrade_id": upgrade_id,
        "source_subscription_id": source_id,
        "target_subscription_id": f"{tenant_id}-sub-{target_sku.lower()}-{upgrade_id}",
        "target_sku": target_sku,
        "licenses": licenses,
        "billing_frequency": "monthly",
        "payment_method": payment_method,
        "currency": currency,
        "new_total_cost_minor": new_total_cost_minor,
        "prepaid_forfeit_acknowledged": prepaid_forfeit_acknowledged,
        "tenant": {
            "plan_type": plan_type,
            "unpaid_balance_minor": unpaid_balance_minor,
            "subscriptions": [
                {
                    "subscription_id": source_id,
                    "sku": source_sku,
                    "status": status,
                    "licenses_purchased": licenses if licenses_purchased is None else licenses_purchased,
                    "add_ons": list(add_ons or []),
                    "billing_frequency": "monthly",
                    "current_period": {"start": start.isoformat(), "end": end.isoformat(), "billed_minor": billed_minor},
                    "prepaid": prepaid,
                },
                *(extra_subscriptions or []),
            ],
        },
    }
