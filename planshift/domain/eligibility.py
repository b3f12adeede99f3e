"""Eligibility (CONTRACT.md §4): every rule of the Upgrade tab, every failing one reported.

`evaluate` is a pure function of the request and what the intake knows about the
tenant: licence holders from the directory, service health, an upgrade in flight.
It returns the failing reasons in the contract's order; an empty list means eligible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

from planshift.catalogue import Catalogue
from planshift.contract import REASON_BY_CODE
from planshift.domain.money import subscription_credit
from planshift.domain.validity import utc_day

UPGRADABLE_STATUSES = ("active", "provisioning", "updating")


@dataclass(frozen=True)
class Reason:
    code: str
    message: str
    remedy: str
    retry_after: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "remedy": self.remedy, "retry_after": self.retry_after}


def reason(code: str, detail: str | None = None) -> Reason:
    spec = REASON_BY_CODE[code]
    message = spec.message if detail is None else f"{spec.message} {detail}"
    return Reason(code, message, spec.remedy.value, spec.retry_after)


class TenantView(NamedTuple):  # one per request: a tuple is the cheapest immutable record to build
    """What intake knows besides the request."""

    license_holders: int  # users holding a licence of the source subscription (directory)
    service_health: Mapping[str, str] = MappingProxyType({})  # service -> healthy|incident|provisioning
    upgrade_in_flight: str | None = None  # another upgrade of the tenant not yet completed/rejected/failed
    prepaid_policy: str = "checkout_rule"


def source_subscription(request: Mapping[str, Any]) -> dict[str, Any] | None:
    wanted = request["source_subscription_id"]
    return next((s for s in request["tenant"]["subscriptions"] if s["subscription_id"] == wanted), None)


def request_date(request: Mapping[str, Any]) -> date:
    """The request's day: the UTC day of `occurred_at`, whatever its offset (CONTRACT.md §3 r2)."""
    return utc_day(request["occurred_at"])


def evaluate(request: Mapping[str, Any], tenant: TenantView, catalogue: Catalogue) -> list[Reason]:
    found: list[Reason] = []
    source = source_subscription(request)
    target_sku = request["target_sku"]
    source_sku = source["sku"] if source else None

    # NOT_ELIGIBLE
    problems = []
    if source is None:
        problems.append(f"subscription {request['source_subscription_id']} is not in the tenant")
    else:
        if source["status"] not in UPGRADABLE_STATUSES:
            problems.append(f"the subscription is {source['status']}")
        if source_sku not in catalogue:
            problems.append(f"the current plan {source_sku} is not in the catalogue")
        if target_sku == source_sku:
            problems.append(f"the target plan {target_sku} is the current plan")
    if target_sku not in catalogue:
        problems.append(f"the target plan {target_sku} is unknown")
    if problems:
        found.append(reason("NOT_ELIGIBLE", "Because " + "; ".join(problems) + "."))

    holders = tenant.license_holders
    if source is not None and holders > source["licenses_purchased"]:
        found.append(reason("MORE_USERS_THAN_LICENSES",
                            f"{holders} users hold a licence; {source['licenses_purchased']} were purchased."))
    if request["licenses"] < holders:
        found.append(reason("LICENSES_BELOW_ASSIGNED_USERS",
                            f"The order buys {request['licenses']} licences for {holders} users."))

    unavailable = []
    if source is not None and source["status"] == "provisioning":
        unavailable.append("the subscription is still being set up")
    services = catalogue.services_of(source_sku, target_sku)
    sick = sorted(s for s, status in tenant.service_health.items() if status != "healthy" and s in services)
    if sick:
        unavailable.append("not healthy: " + ", ".join(f"{s} ({tenant.service_health[s]})" for s in sick))
    if unavailable:
        found.append(reason("NOT_FULLY_SET_UP_OR_SERVICE_UNAVAILABLE", "Now: " + "; ".join(unavailable) + "."))

    if tenant.upgrade_in_flight and tenant.upgrade_in_flight != request["upgrade_id"]:
        found.append(reason("CHANGE_IN_PROGRESS_OR_CREDIT_CHECK_PENDING",
                            f"Upgrade {tenant.upgrade_in_flight} is still in progress."))

    if source_sku is not None:
        same = [s for s in request["tenant"]["subscriptions"] if s["sku"] == source_sku and s["status"] != "cancelled"]
        if len(same) >= 2:
            found.append(reason("MULTIPLE_PLANS_SAME_PRODUCT", f"{len(same)} subscriptions of {source_sku}."))

    if source is not None and source.get("prepaid"):
        if tenant.prepaid_policy == "block":
            found.append(reason("PREPAID_PLAN"))
        elif not request.get("prepaid_forfeit_acknowledged", False):
            estimate = subscription_credit(source, request_date(request), request["new_total_cost_minor"])
            if estimate.forfeit_minor > 0:
                found.append(reason("PREPAID_FORFEIT_NOT_ACKNOWLEDGED",
                                    f"About {estimate.forfeit_minor} {request['currency']} minor units "
                                    "of prepaid time would be forfeited."))

    if request["tenant"]["plan_type"] != "commercial":
        found.append(reason("GOVERNMENT_OR_NONPROFIT", f"The plan type is {request['tenant']['plan_type']}."))

    if source is not None and source["status"] == "updating":
        found.append(reason("TEMPORARY_HIGH_VOLUME"))

    if source_sku in catalogue and target_sku in catalogue and source_sku != target_sku:
        missing, lower = catalogue.fewer_services(source_sku, target_sku)
        if missing or lower:
            said = ([f"lacks {', '.join(missing)}"] if missing else []) + \
                   ([f"has a lower tier of {', '.join(lower)}"] if lower else [])
            found.append(reason("TARGET_PLAN_NOT_SUPPORTED", f"{target_sku} {' and '.join(said)}."))

    if source is not None and source["add_ons"]:
        found.append(reason("HAS_ADD_ON", f"Add-ons: {', '.join(source['add_ons'])}."))

    if request["tenant"]["unpaid_balance_minor"] > 0:
        found.append(reason("UNPAID_BALANCE", f"{request['tenant']['unpaid_balance_minor']} "
                                              f"{request['currency']} minor units are unpaid."))

    return found  # in the contract's order: tests/test_eligibility.py checks it with every code at once


# CONTRACT.md §4 (r2), credit check: the rules that can change while a check waits, evaluated
# again on approval — licence holders against the licences bought and purchased, and
# service health (and the source being set up, which shares the code).
RECHECKED_ON_APPROVAL = frozenset({
    "MORE_USERS_THAN_LICENSES", "LICENSES_BELOW_ASSIGNED_USERS", "NOT_FULLY_SET_UP_OR_SERVICE_UNAVAILABLE",
})


def recheck(request: Mapping[str, Any], tenant: TenantView, catalogue: Catalogue) -> list[Reason]:
    """The failing rules of `RECHECKED_ON_APPROVAL` now, for an approved credit check."""
    return [r for r in evaluate(request, tenant, catalogue) if r.code in RECHECKED_ON_APPROVAL]
