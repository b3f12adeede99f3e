"""A realistic day of upgrade requests, relative to a given day: what `planshift demo` sends.

Seeded, so the same day and seed give the same tenants, users and requests (and so, from a
clean state, the same results). The order systems of a few hundred tenants ask to move
between the catalogue's plans; billing periods started on each tenant's own anniversary
(monthly or annual), so each completion today credits the unused part of a period. Beside
them, one tenant of 200,000 users ("many users take longer"), and the odd but valid
requests the article's blockers are for — each reason code of CONTRACT.md §4 at least once —
plus credit checks approved, declined and one that expires unanswered, a prepaid upgrade
that forfeits part of its term, a request sent twice, an upgrade id another tenant used, a
request that breaks its schema and a record that is not JSON.

`PREPAID_PLAN` happens only under `PLANSHIFT_PREPAID_POLICY=block`, which excludes the
default policy's forfeit rule: the day's prepaid tenant shows it through a preview under
that policy (`Story.policy_preview`).

Pure: nothing here talks to Kafka or the directory; `cli/demo.py` does.
"""

from __future__ import annotations

import calendar
import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Iterator

from planshift.storage.directory import Licence

# Monthly list price per user (minor units), for the snapshot's billed amounts and the
# checkout totals. Roughly Microsoft 365's list prices; only ratios matter here.
PRICE = {
    "EXCHANGE_ONLINE_PLAN_1": 400, "EXCHANGE_ONLINE_PLAN_2": 800, "M365_APPS_FOR_BUSINESS": 825,
    "M365_BUSINESS_BASIC": 600, "M365_BUSINESS_STANDARD": 1250, "M365_BUSINESS_PREMIUM": 2200,
    "O365_E1": 1000, "O365_E3": 2300, "M365_E3": 3600, "M365_E5": 5700,
}
# Upgrades the Upgrade tab supports (the target keeps every service, data ones at a tier
# as high): tests/test_demo_day.py checks each against the catalogue.
PATHS = (
    ("M365_BUSINESS_BASIC", "M365_BUSINESS_STANDARD"), ("M365_BUSINESS_BASIC", "M365_BUSINESS_PREMIUM"),
    ("M365_BUSINESS_STANDARD", "M365_BUSINESS_PREMIUM"), ("O365_E1", "O365_E3"), ("O365_E1", "M365_E3"),
    ("O365_E3", "M365_E3"), ("O365_E3", "M365_E5"), ("M365_E3", "M365_E5"),
    ("EXCHANGE_ONLINE_PLAN_1", "EXCHANGE_ONLINE_PLAN_2"), ("M365_BUSINESS_BASIC", "O365_E1"),
)
CURRENCIES = (("EUR", 50), ("USD", 35), ("GBP", 15))
WORDS_A = ("alpine", "blue", "bright", "cedar", "coastal", "crimson", "delta", "eastern", "fern", "golden",
           "granite", "harbor", "iron", "jade", "lake", "maple", "meadow", "north", "oak", "pacific",
           "pine", "quartz", "river", "silver", "south", "stone", "summit", "swift", "valley", "western")
WORDS_B = ("analytics", "bakery", "builders", "clinic", "consulting", "design", "dental", "foods", "freight",
           "games", "health", "labs", "legal", "logistics", "media", "motors", "partners", "press", "realty",
           "robotics", "school", "software", "studio", "supply", "systems", "textiles", "travel", "works")
LARGE_TENANT = "contoso-global"
LARGE_USERS = 200_000


@dataclass
class Story:
    """One request of the day, and what the demo's other systems do around it."""
    kind: str  # "ordinary", "large", a reason code it is built to meet, "resent", "taken", "broken", "not-json"
    request: dict[str, Any] | None  # None for a record that is not an event at all
    holders: int = 0  # users holding a licence of the source subscription (seeded into the directory)
    decision: str | None = "approve"  # the credit system's answer if a check is asked: approve, decline, None
    wave: int = 1  # 2: sent once intake has handled wave 1 (it depends on what wave 1 started)
    unchecked: bool = False  # sent past the publisher's schema check (as an order system that skips it)
    raw: bytes | None = None  # sent as these bytes: not an event at all
    policy_preview: str | None = None  # a prepaid policy to preview this request under as well

    @property
    def tenant_id(self) -> str | None:
        return self.request["tenant_id"] if self.request else None

    @property
    def upgrade_id(self) -> str | None:
        return self.request.get("upgrade_id") if self.request else None


@dataclass
class Day:
    today: date
    seed: str
    stories: list[Story] = field(default_factory=list)

    def wave(self, n: int) -> list[Story]:
        return [s for s in self.stories if s.wave == n]

    def licences(self) -> Iterator[Licence]:
        """Every seeded user's licence of the source subscription; every 7th has a service
        switched off (the migration resets it and the reset report names them)."""
        for story in self.stories:
            if not story.holders or story.kind in ("resent", "taken", "CHANGE_IN_PROGRESS_OR_CREDIT_CHECK_PENDING"):
                continue
            request = story.request
            tenant, source = request["tenant_id"], request["source_subscription_id"]
            sku = next(s["sku"] for s in request["tenant"]["subscriptions"] if s["subscription_id"] == source)
            for i in range(story.holders):
                yield Licence(tenant, f"user{i:06d}@{tenant}.example", source, sku,
                              ("SHAREPOINT",) if i % 7 == 3 else ())

    @property
    def users(self) -> int:
        return sum(s.holders for s in self.stories
                   if s.kind not in ("resent", "taken", "CHANGE_IN_PROGRESS_OR_CREDIT_CHECK_PENDING"))


def add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    return day.replace(year=year, month=month, day=min(day.day, calendar.monthrange(year, month)[1]))


class _Maker:
    def __init__(self, today: date, rng: random.Random):
        self.today, self.rng, self.count, self.names = today, rng, 0, set()

    def tenant_name(self) -> str:
        while True:
            name = f"{self.rng.choice(WORDS_A)}-{self.rng.choice(WORDS_B)}"
            if name not in self.names:
                self.names.add(name)
                return name
            name = f"{name}-{self.rng.randint(2, 99)}"
            if name not in self.names:
                self.names.add(name)
                return name

    def request(self, tenant: str, source: str, target: str, licenses: int, *, frequency: str = "monthly",
                payment: str = "card", currency: str | None = None, day: date | None = None,
                purchased: int | None = None, **tenant_fields: Any) -> dict[str, Any]:
        """A complete request: the tenant's commerce snapshot with its current period (started on
        the tenant's anniversary, billed in advance at its start), and the checkout's total."""
        rng, day = self.rng, day or self.today
        self.count += 1
        currency = currency or rng.choices([c for c, _ in CURRENCIES], [w for _, w in CURRENCIES])[0]
        months = 12 if frequency == "annual" else 1
        start = day - timedelta(days=rng.randint(0, 364 if frequency == "annual" else 27))
        end = add_months(start, months)
        if end <= day:
            start, end = day, add_months(day, months)
        purchased = licenses if purchased is None else purchased
        upgrade_id = f"ord-{day:%Y%m%d}-{self.count:04d}"
        source_id = f"{tenant}-sub-{source.lower()}"
        subscription = {
            "subscription_id": source_id, "sku": source, "status": tenant_fields.pop("status", "active"),
            "licenses_purchased": purchased, "add_ons": tenant_fields.pop("add_ons", []),
            "billing_frequency": frequency,
            "current_period": {"start": start.isoformat(), "end": end.isoformat(),
                               "billed_minor": PRICE[source] * purchased * months},
            "prepaid": tenant_fields.pop("prepaid", None),
        }
        seconds = self.count * 7 % 86_400
        return {
            "tenant_id": tenant,
            "occurred_at": f"{day.isoformat()}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}Z",
            "upgrade_id": upgrade_id,
            "source_subscription_id": source_id,
            "target_subscription_id": f"{tenant}-sub-{target.lower()}-{upgrade_id}",
            "target_sku": target,
            "licenses": licenses,
            "billing_frequency": frequency,
            "payment_method": payment,
            "currency": currency,
            "new_total_cost_minor": PRICE[target] * licenses * months,
            "prepaid_forfeit_acknowledged": tenant_fields.pop("prepaid_forfeit_acknowledged", False),
            "tenant": {"plan_type": tenant_fields.pop("plan_type", "commercial"),
                       "unpaid_balance_minor": tenant_fields.pop("unpaid_balance_minor", 0),
                       "subscriptions": [subscription, *tenant_fields.pop("extra_subscriptions", [])]},
        }

    def users(self) -> int:
        roll = self.rng.random()
        if roll < 0.70:
            return self.rng.randint(5, 60)
        if roll < 0.95:
            return self.rng.randint(60, 500)
        return self.rng.randint(500, 2000)


def demo_day(today: date, *, tenants: int = 300, large_users: int = LARGE_USERS, seed: str = "planshift-demo") -> Day:
    """The day's stories in the order they are sent: the large tenant first (its batches go
    ahead of everybody's), then the others shuffled, then wave 2."""
    rng = random.Random(f"{seed}:{today.isoformat()}")
    make = _Maker(today, rng)
    day = Day(today, seed)
    large = Story("large", make.request(LARGE_TENANT, "O365_E3", "M365_E5", large_users + 100, currency="USD",
                                        purchased=large_users + 100), holders=large_users)
    stories: list[Story] = []
    for _ in range(tenants):
        source, target = rng.choice(PATHS)
        users = make.users()
        buying = users + (rng.randint(1, 20) if rng.random() < 0.2 else 0)
        assigned = users - (rng.randint(1, min(5, users - 1)) if rng.random() < 0.2 else 0)
        frequency = "annual" if rng.random() < 0.25 else "monthly"
        payment = "invoice" if rng.random() < 0.1 else "card"
        stories.append(Story("ordinary", make.request(make.tenant_name(), source, target, buying, frequency=frequency,
                                                      payment=payment, purchased=users), holders=assigned))
    stories += _odd_requests(make)
    rng.shuffle(stories)
    day.stories = [large, *stories]
    ordinary = next(s for s in stories if s.kind == "ordinary" and s.request["payment_method"] == "card")
    other = next(s for s in stories if s.kind == "ordinary" and s.tenant_id != ordinary.tenant_id)
    second = make.request(LARGE_TENANT, "O365_E3", "M365_E5", large_users + 100, currency="USD",
                          purchased=large_users + 100)
    taken = dict(make.request(other.tenant_id, "M365_BUSINESS_BASIC", "M365_BUSINESS_PREMIUM", 10),
                 upgrade_id=ordinary.upgrade_id)
    taken["target_subscription_id"] = f"{other.tenant_id}-sub-m365_business_premium-{ordinary.upgrade_id}"
    day.stories += [
        # the large tenant's order system sends another upgrade while the first waits for its credit check
        Story("CHANGE_IN_PROGRESS_OR_CREDIT_CHECK_PENDING", second, holders=large_users, wave=2),
        # an order system that retries after a timeout: the same upgrade id again (a new event id)
        Story("resent", dict(ordinary.request), holders=ordinary.holders, wave=2),
        # a second order system that reuses an upgrade id another tenant took
        Story("taken", taken, holders=0, wave=2),
    ]
    return day


def _odd_requests(make: _Maker) -> list[Story]:
    """The article's blockers, each met by one tenant's request, and the broken ones."""
    t, today = make.tenant_name, make.today
    basic, premium = "M365_BUSINESS_BASIC", "M365_BUSINESS_PREMIUM"
    stories = [
        Story("NOT_ELIGIBLE", make.request(t(), premium, premium, 25), holders=25),
        Story("MORE_USERS_THAN_LICENSES", make.request(t(), basic, premium, 60, purchased=50), holders=53),
        Story("LICENSES_BELOW_ASSIGNED_USERS", make.request(t(), basic, premium, 30, purchased=40), holders=40),
        Story("NOT_FULLY_SET_UP_OR_SERVICE_UNAVAILABLE", make.request(t(), basic, premium, 15, status="provisioning"),
              holders=15),
        Story("MULTIPLE_PLANS_SAME_PRODUCT", None, holders=20),
        Story("GOVERNMENT_OR_NONPROFIT", make.request(t(), basic, premium, 35, plan_type="nonprofit"), holders=35),
        Story("TEMPORARY_HIGH_VOLUME", make.request(t(), "O365_E1", "O365_E3", 80, status="updating"), holders=80),
        Story("TARGET_PLAN_NOT_SUPPORTED", make.request(t(), "O365_E3", premium, 45), holders=45),
        Story("HAS_ADD_ON", make.request(t(), "M365_E3", "M365_E5", 22, add_ons=["AUDIO_CONFERENCING"]), holders=22),
        Story("UNPAID_BALANCE", make.request(t(), basic, "M365_BUSINESS_STANDARD", 18, unpaid_balance_minor=12_000),
              holders=18),
        Story("CREDIT_CHECK_DECLINED", make.request(t(), "O365_E1", "M365_E3", 140, payment="invoice"), holders=140,
              decision="decline"),
        Story("CREDIT_CHECK_DECLINED", make.request(t(), "M365_E3", "M365_E5", 75, payment="invoice"), holders=75,
              decision="decline"),
        # asked three weeks ago (fifteen business days): nobody answered its credit check
        Story("CREDIT_CHECK_EXPIRED", make.request(t(), basic, premium, 33, payment="invoice",
                                                   day=today - timedelta(days=21)), holders=33, decision=None),
    ]
    multiple = make.request(t(), basic, premium, 20)
    extra = dict(multiple["tenant"]["subscriptions"][0], subscription_id=f"{multiple['tenant_id']}-sub-basic-2",
                 licenses_purchased=5)
    multiple["tenant"]["subscriptions"].append(extra)
    stories[4].request = multiple
    # Prepaid for a year, 100 days in: most of the term is left, more than the new plan's first
    # month costs, so the rest is forfeited. One tenant acknowledged the forfeit at checkout.
    for acknowledged in (True, False):
        request = make.request(t(), "M365_BUSINESS_STANDARD", premium, 40, frequency="annual",
                               currency="EUR", prepaid_forfeit_acknowledged=acknowledged)
        request["billing_frequency"] = "monthly"
        request["new_total_cost_minor"] = PRICE[premium] * 40
        term_start = today - timedelta(days=100)
        request["tenant"]["subscriptions"][0].update(
            current_period={"start": term_start.isoformat(), "end": add_months(term_start, 12).isoformat(),
                            "billed_minor": PRICE["M365_BUSINESS_STANDARD"] * 40 * 12},
            prepaid={"term_start": term_start.isoformat(), "term_end": add_months(term_start, 12).isoformat(),
                     "paid_minor": PRICE["M365_BUSINESS_STANDARD"] * 40 * 12})
        stories.append(Story("prepaid-forfeit" if acknowledged else "PREPAID_FORFEIT_NOT_ACKNOWLEDGED", request,
                             holders=40, policy_preview="block" if acknowledged else None))
    # schema-valid, but its period ends before it starts: rejected INVALID_REQUEST and dead-lettered
    invalid = make.request(t(), basic, premium, 12)
    period = invalid["tenant"]["subscriptions"][0]["current_period"]
    period["start"], period["end"] = period["end"], period["start"]
    stories.append(Story("INVALID_REQUEST", invalid, holders=12))
    # an order system that skips the publisher's check: `licenses` is not a number
    broken = make.request(t(), basic, premium, 9)
    stories.append(Story("broken", dict(broken, licenses="nine"), holders=9, unchecked=True))
    stories.append(Story("not-json", None, raw=b"<order><tenant>fabrikam</tenant></order>"))
    return stories
