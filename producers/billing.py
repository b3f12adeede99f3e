"""A billing-system simulator (`planshift simulate billing`): invoices as a billing system
would issue them after planshift's `billing.switch` and `credit.issued`, with faults.

For a switch effective on day E it issues one invoice on E: the old plan charged up to
E (service [first of E's month, E)) and the new plan from E for one billing period. For
a credit it issues the "next invoice" 10 days after E (due by E + 30): the new plan's
second period and the credit as a negative line carrying `credit_id`.

Faults, each at its own rate, chosen per upgrade by a hash of (seed, fault, upgrade_id),
so a run is reproducible and a fault hits the same upgrades every time:

  overlap           the old plan is charged 5 days past E
  new-billing-gap   the new plan's first charge starts 3 days after E
  missing-credit    the credit is never invoiced
  late-credit       the credit's invoice is issued 7 days after its due date
  wrong-amount      the credit line is 100 minor units short
  duplicate-credit  the credit is invoiced twice (a second invoice)
  orphan-credit     an extra credit line whose credit_id planshift never issued
  wrong-currency    the credit's invoice is in another currency

It runs on the same transactional runtime as planshift's consumers, so each input
yields its invoices exactly once.
"""

from __future__ import annotations

import calendar
import hashlib
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Mapping

from planshift.contract import Topic
from planshift.events import event
from planshift.runtime import Context, ProcessorConfig, Source, StreamProcessor
from planshift.settings import Settings

GROUP_ID = "planshift-billing-simulator"
FAULTS = ("overlap", "new-billing-gap", "missing-credit", "late-credit", "wrong-amount", "duplicate-credit",
          "orphan-credit", "wrong-currency")
CREDIT_INVOICE_AFTER_DAYS = 10


def add_period(day: date, frequency: str) -> date:
    if frequency == "annual":
        try:
            return day.replace(year=day.year + 1)
        except ValueError:  # 29 February
            return day.replace(year=day.year + 1, day=28)
    month = day.month % 12 + 1
    year = day.year + (day.month == 12)
    return day.replace(year=year, month=month, day=min(day.day, calendar.monthrange(year, month)[1]))


def other_currency(currency: str) -> str:
    return "USD" if currency != "USD" else "EUR"


class BillingSimulator:
    def __init__(self, rates: Mapping[str, float] | None = None, seed: str = "planshift"):
        unknown = set(rates or {}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}; known: {', '.join(FAULTS)}")
        self.rates = dict(rates or {})
        self.seed = seed

    def faulty(self, fault: str, upgrade_id: str) -> bool:
        rate = self.rates.get(fault, 0.0)
        if rate <= 0:
            return False
        digest = hashlib.sha256(f"{self.seed}:{fault}:{upgrade_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < rate

    def on_switch(self, ctx: Context, switch: dict[str, Any]) -> None:
        upgrade_id, tenant_id = switch["upgrade_id"], switch["tenant_id"]
        effective = date.fromisoformat(switch["effective_date"])
        old_end = effective + timedelta(days=5) if self.faulty("overlap", upgrade_id) else effective
        new_start = effective + timedelta(days=3) if self.faulty("new-billing-gap", upgrade_id) else effective
        lines = [
            {"line_id": f"inv-{upgrade_id}-switch-1", "subscription_id": switch["old_subscription_id"],
             "kind": "charge", "amount_minor": 1000 + (old_end - effective.replace(day=1)).days * 100,
             "service_start": effective.replace(day=1).isoformat(), "service_end": old_end.isoformat(),
             "credit_id": None},
            {"line_id": f"inv-{upgrade_id}-switch-2", "subscription_id": switch["new_subscription_id"],
             "kind": "charge", "amount_minor": switch["new_total_cost_minor"],
             "service_start": new_start.isoformat(),
             "service_end": add_period(effective, switch["billing_frequency"]).isoformat(), "credit_id": None},
        ]
        lines = [line for line in lines if line["service_end"] > line["service_start"]]
        self._invoice(ctx, tenant_id, f"inv-{upgrade_id}-switch", effective, switch["currency"], lines)

    def on_credit(self, ctx: Context, credit: dict[str, Any]) -> None:
        upgrade_id, tenant_id = credit["upgrade_id"], credit["tenant_id"]
        if self.faulty("missing-credit", upgrade_id):
            return
        due_by = date.fromisoformat(credit["due_by"])
        effective = due_by - timedelta(days=30)
        issued_on = due_by + timedelta(days=7) if self.faulty("late-credit", upgrade_id) \
            else effective + timedelta(days=CREDIT_INVOICE_AFTER_DAYS)
        amount = credit["amount_minor"] - (100 if self.faulty("wrong-amount", upgrade_id) else 0)
        currency = other_currency(credit["currency"]) if self.faulty("wrong-currency", upgrade_id) else credit["currency"]
        line = {"line_id": f"inv-{upgrade_id}-credit-1", "subscription_id": credit["subscription_id"], "kind": "credit",
                "amount_minor": -amount, "service_start": effective.isoformat(),
                "service_end": credit["period_end"], "credit_id": credit["credit_id"]}
        lines = [line]
        if self.faulty("orphan-credit", upgrade_id):
            lines.append({**line, "line_id": f"inv-{upgrade_id}-credit-2", "amount_minor": -500,
                          "credit_id": f"{upgrade_id}:credit-from-elsewhere"})
        self._invoice(ctx, tenant_id, f"inv-{upgrade_id}-credit", issued_on, currency, lines)
        if self.faulty("duplicate-credit", upgrade_id):
            self._invoice(ctx, tenant_id, f"inv-{upgrade_id}-credit-again", issued_on + timedelta(days=1), currency,
                          [{**line, "line_id": f"inv-{upgrade_id}-credit-again-1"}])

    def _invoice(self, ctx: Context, tenant_id: str, invoice_id: str, issued_on: date, currency: str,
                 lines: list[dict[str, Any]]) -> None:
        # The simulated billing system issues the invoice on `issued_on`, which may be
        # days after the switch: the event says it occurred then.
        ctx.emit(Topic.INVOICE_ISSUED, tenant_id, event(
            Topic.INVOICE_ISSUED, tenant_id, invoice_id, occurred_at=datetime.combine(issued_on, time(), timezone.utc),
            invoice_id=invoice_id, issued_on=issued_on.isoformat(), currency=currency, lines=lines))


def processor(settings: Settings, rates: Mapping[str, float] | None = None, seed: str = "planshift",
              instance: str = "0", **config: Any) -> StreamProcessor:
    simulator = BillingSimulator(rates, seed)
    return StreamProcessor(settings, ProcessorConfig(
        group_id=GROUP_ID,
        sources=(Source(Topic.BILLING_SWITCH, simulator.on_switch), Source(Topic.CREDIT_ISSUED, simulator.on_credit)),
        stateful=False,
        instance=instance,
        **config,
    ))
