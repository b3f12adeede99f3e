"""A billing-system simulator (`planshift simulate billing`): invoices as a billing system
that bills **in advance**, as Microsoft 365 does (CONTRACT.md §6 r2), would issue them
around planshift's upgrades, with faults.

It bills each subscription's period at the period's start, for its billing frequency:

- the old plan's current period (a prepaid plan: its term), charged at its start, before
  the upgrade — learnt from `upgrade.requested`, whose commerce snapshot carries it
  (invoice `inv-{subscription}-{start}`: a repeated request finds the same invoice);
- after `billing.switch` effective on day E, the old plan is never charged again, and the
  new plan is charged from E for one billing period (invoice `inv-{upgrade}-switch`, on E);
- the credit of `credit.issued` on the next invoice, 10 days after E (due by E + 30), as a
  negative line carrying `credit_id` and the unused days `[E, period_end)` it gives back
  (invoice `inv-{upgrade}-credit`).

Faults, each at its own rate, chosen per upgrade by a hash of (seed, fault, upgrade_id),
so a run is reproducible and a fault hits the same upgrades every time:

  overlap              the old plan is billed again after the switch: its next period
  new-billing-gap      the new plan's first charge starts 3 days after E
  new-billing-early    the new plan is charged from 7 days before E
  missing-credit       the credit is never invoiced
  late-credit          the credit's invoice is issued 7 days after its due date
  wrong-amount         the credit line is 100 minor units short
  duplicate-credit     the credit is invoiced again on a second invoice
  orphan-credit        an extra credit line whose credit_id planshift never issued
  wrong-currency       the credit's invoice is in another currency

and two harmless ones, which a correct reconciliation does not flag:

  redelivered-invoice  the credit's invoice is delivered twice (same invoice_id, a new event_id)
  split-credit         the credit is spread over two lines of its invoice that add up

It runs on the same transactional runtime as planshift's consumers, so each input yields
its invoices exactly once; it remembers each request's current period (state, keyed by
upgrade id) for the switch.
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
FAULTS = ("overlap", "new-billing-gap", "new-billing-early", "missing-credit", "late-credit", "wrong-amount",
          "duplicate-credit", "orphan-credit", "wrong-currency")
HARMLESS = ("redelivered-invoice", "split-credit")
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


def charge(line_id: str, subscription_id: str, amount_minor: int, start: date, end: date) -> dict[str, Any]:
    return {"line_id": line_id, "subscription_id": subscription_id, "kind": "charge", "amount_minor": amount_minor,
            "service_start": start.isoformat(), "service_end": end.isoformat(), "credit_id": None}


class BillingSimulator:
    def __init__(self, rates: Mapping[str, float] | None = None, seed: str = "planshift"):
        unknown = set(rates or {}) - set(FAULTS) - set(HARMLESS)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(FAULTS + HARMLESS)}")
        self.rates = dict(rates or {})
        self.seed = seed

    def faulty(self, fault: str, upgrade_id: str) -> bool:
        rate = self.rates.get(fault, 0.0)
        if rate <= 0:
            return False
        digest = hashlib.sha256(f"{self.seed}:{fault}:{upgrade_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < rate

    # -- the old plan's current period, billed at its start ------------------------------
    def on_request(self, ctx: Context, request: dict[str, Any]) -> None:
        try:
            self._bill_current_period(ctx, request)
        except (KeyError, TypeError, AttributeError, ValueError):
            return  # not a request the billing system can read: planshift refuses it; nothing was billed

    def _bill_current_period(self, ctx: Context, request: dict[str, Any]) -> None:
        source = next((s for s in request["tenant"]["subscriptions"]
                       if s["subscription_id"] == request["source_subscription_id"]), None)
        if source is None:
            return
        prepaid = source.get("prepaid")
        if prepaid:
            start, end, amount = prepaid["term_start"], prepaid["term_end"], prepaid["paid_minor"]
        else:
            period = source["current_period"]
            start, end, amount = period["start"], period["end"], period["billed_minor"]
        start_day, end_day = date.fromisoformat(start), date.fromisoformat(end)
        subscription = source["subscription_id"]
        period = {"subscription_id": subscription, "start": start, "end": end, "billed_minor": amount,
                  "billing_frequency": source["billing_frequency"], "prepaid": bool(prepaid)}
        ctx.put(f"period:{request['upgrade_id']}", period)
        if amount > 0:
            self._invoice(ctx, request["tenant_id"], f"inv-{subscription}-{start}", start_day, request["currency"],
                          [charge(f"inv-{subscription}-{start}-1", subscription, amount, start_day, end_day)])

    # -- the switch: the new plan from E, the old one never again ------------------------
    def on_switch(self, ctx: Context, switch: dict[str, Any]) -> None:
        upgrade_id, tenant_id = switch["upgrade_id"], switch["tenant_id"]
        effective = date.fromisoformat(switch["effective_date"])
        new_start = effective
        if self.faulty("new-billing-gap", upgrade_id):
            new_start = effective + timedelta(days=3)
        elif self.faulty("new-billing-early", upgrade_id):
            new_start = effective - timedelta(days=7)
        new_end = add_period(effective, switch["billing_frequency"])
        self._invoice(ctx, tenant_id, f"inv-{upgrade_id}-switch", effective, switch["currency"], [
            charge(f"inv-{upgrade_id}-switch-1", switch["new_subscription_id"], switch["new_total_cost_minor"],
                   new_start, new_end)])
        period = ctx.get(f"period:{upgrade_id}")
        if period and self.faulty("overlap", upgrade_id):
            # The old plan's next period, billed at its start as if nothing had changed.
            start = date.fromisoformat(period["end"])
            end = add_period(start, "annual" if period["prepaid"] else period["billing_frequency"])
            old = period["subscription_id"]
            self._invoice(ctx, tenant_id, f"inv-{old}-{start.isoformat()}", start, switch["currency"], [
                charge(f"inv-{old}-{start.isoformat()}-1", old, period["billed_minor"], start, end)])

    # -- the credit, on the next invoice ----------------------------------------------------
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
        if self.faulty("split-credit", upgrade_id) and amount >= 2:
            first = amount // 3
            lines = [{**line, "amount_minor": -first},
                     {**line, "line_id": f"inv-{upgrade_id}-credit-1b", "amount_minor": -(amount - first)}]
        if self.faulty("orphan-credit", upgrade_id):
            lines.append({**line, "line_id": f"inv-{upgrade_id}-credit-2", "amount_minor": -500,
                          "credit_id": f"{upgrade_id}:credit-from-elsewhere"})
        invoice_id = f"inv-{upgrade_id}-credit"
        self._invoice(ctx, tenant_id, invoice_id, issued_on, currency, lines)
        if self.faulty("redelivered-invoice", upgrade_id):  # a retry of the billing system's delivery
            self._invoice(ctx, tenant_id, invoice_id, issued_on, currency, lines, event_id=f"{invoice_id}:retry")
        if self.faulty("duplicate-credit", upgrade_id):
            self._invoice(ctx, tenant_id, f"inv-{upgrade_id}-credit-again", issued_on + timedelta(days=1), currency,
                          [{**line, "line_id": f"inv-{upgrade_id}-credit-again-1"}])

    def _invoice(self, ctx: Context, tenant_id: str, invoice_id: str, issued_on: date, currency: str,
                 lines: list[dict[str, Any]], event_id: str | None = None) -> None:
        # The simulated billing system issues the invoice on `issued_on`, which may be
        # days after the switch (or before it, for the current period): the event says so.
        ctx.publish(event(
            Topic.INVOICE_ISSUED, tenant_id, event_id or invoice_id,
            occurred_at=datetime.combine(issued_on, time(), timezone.utc),
            invoice_id=invoice_id, issued_on=issued_on.isoformat(), currency=currency, lines=lines))


def processor(settings: Settings, rates: Mapping[str, float] | None = None, seed: str = "planshift",
              instance: str = "0", **config: Any) -> StreamProcessor:
    return StreamProcessor(settings, billing_config(settings, rates, seed, instance, **config))


def billing_config(settings: Settings, rates: Mapping[str, float] | None = None, seed: str = "planshift",
                   instance: str = "0", simulator: BillingSimulator | None = None, **config: Any) -> ProcessorConfig:
    simulator = simulator or BillingSimulator(rates, seed)
    # upgrade.requested and billing.switch are both keyed by tenant_id with the same
    # partition count, so a request's period and its switch meet in one partition's store.
    return ProcessorConfig(
        group_id=GROUP_ID,
        # The billing system reads requests as plain JSON: one it cannot read is not its
        # to dead-letter (planshift's intake does that).
        sources=(Source(Topic.UPGRADE_REQUESTED, simulator.on_request, schema=""),
                 Source(Topic.BILLING_SWITCH, simulator.on_switch),
                 Source(Topic.CREDIT_ISSUED, simulator.on_credit)),
        instance=instance,
        **config,
    )
