"""Eligibility (CONTRACT.md §4): one case per reason code, and several at once in the contract's order."""

from __future__ import annotations

from datetime import date

import pytest

from planshift.catalogue import Catalogue
from planshift.contract import REASONS
from planshift.domain.eligibility import TenantView, evaluate
from producers.samples import upgrade_request

CATALOGUE = Catalogue.load()
DAY = date(2026, 11, 17)


def request(**overrides):
    return upgrade_request("contoso", "ord-1", today=DAY, **overrides)


def second_subscription(sku="M365_BUSINESS_STANDARD", status="active"):
    return {"subscription_id": "contoso-sub-2", "sku": sku, "status": status, "licenses_purchased": 5, "add_ons": [],
            "billing_frequency": "monthly",
            "current_period": {"start": "2026-11-01", "end": "2026-12-01", "billed_minor": 100}, "prepaid": None}


PREPAID = {"term_start": "2026-01-01", "term_end": "2027-01-01", "paid_minor": 1_800_000}


def missing_source():
    r = request()
    r["source_subscription_id"] = "contoso-sub-elsewhere"
    return r


CASES = {
    "NOT_ELIGIBLE": [
        (lambda: missing_source(), TenantView(0)),
        (lambda: request(status="expired"), TenantView(100)),
        (lambda: request(target_sku="M365_NONEXISTENT"), TenantView(100)),
        (lambda: request(target_sku="M365_BUSINESS_STANDARD"), TenantView(100)),
    ],
    "MORE_USERS_THAN_LICENSES": [(lambda: request(licenses=200, licenses_purchased=100), TenantView(150))],
    "LICENSES_BELOW_ASSIGNED_USERS": [(lambda: request(licenses=90, licenses_purchased=120), TenantView(100))],
    "NOT_FULLY_SET_UP_OR_SERVICE_UNAVAILABLE": [
        (lambda: request(status="provisioning"), TenantView(100)),
        (lambda: request(), TenantView(100, service_health={"INTUNE": "incident"})),  # a target service
        (lambda: request(), TenantView(100, service_health={"EXCHANGE": "provisioning"})),  # a source service
    ],
    "CHANGE_IN_PROGRESS_OR_CREDIT_CHECK_PENDING": [(lambda: request(), TenantView(100, upgrade_in_flight="ord-0"))],
    "MULTIPLE_PLANS_SAME_PRODUCT": [(lambda: request(extra_subscriptions=[second_subscription()]), TenantView(100))],
    "PREPAID_PLAN": [(lambda: request(prepaid=PREPAID), TenantView(100, prepaid_policy="block"))],
    "PREPAID_FORFEIT_NOT_ACKNOWLEDGED": [(lambda: request(prepaid=PREPAID, new_total_cost_minor=10_000), TenantView(100))],
    "GOVERNMENT_OR_NONPROFIT": [(lambda: request(plan_type="government"), TenantView(100)),
                                (lambda: request(plan_type="nonprofit"), TenantView(100))],
    "TEMPORARY_HIGH_VOLUME": [(lambda: request(status="updating"), TenantView(100))],
    "TARGET_PLAN_NOT_SUPPORTED": [
        (lambda: request(source_sku="M365_BUSINESS_BASIC", target_sku="M365_APPS_FOR_BUSINESS"), TenantView(100)),
        (lambda: request(source_sku="EXCHANGE_ONLINE_PLAN_2", target_sku="M365_BUSINESS_PREMIUM"), TenantView(100)),
        # r2 (issue 10, case 8): a plan with fewer services, though none of them holds data
        (lambda: request(source_sku="M365_BUSINESS_PREMIUM", target_sku="M365_BUSINESS_BASIC"), TenantView(100)),
    ],
    "HAS_ADD_ON": [(lambda: request(add_ons=["TEAMS_PHONE"]), TenantView(100))],
    "UNPAID_BALANCE": [(lambda: request(unpaid_balance_minor=1), TenantView(100))],
}
PARAMS = [(code, i, make, view) for code, cases in CASES.items() for i, (make, view) in enumerate(cases)]


def test_every_eligibility_code_has_a_case():
    assert set(CASES) == {r.code for r in REASONS} - {"INVALID_REQUEST", "CREDIT_CHECK_DECLINED",
                                                             "CREDIT_CHECK_EXPIRED"}  # tests/test_lifecycle_rules.py


def test_a_clean_request_is_eligible():
    assert evaluate(request(), TenantView(100), CATALOGUE) == []


@pytest.mark.parametrize("code,i,make,view", PARAMS, ids=[f"{c}-{i}" for c, i, _, _ in PARAMS])
def test_each_rule_fails_alone(code, i, make, view):
    reasons = evaluate(make(), view, CATALOGUE)
    assert [r.code for r in reasons] == [code]
    spec = next(r for r in REASONS if r.code == code)
    assert reasons[0].remedy == spec.remedy.value and reasons[0].retry_after == spec.retry_after
    assert reasons[0].message.startswith(spec.message)


def test_several_failures_come_in_the_contracts_order():
    r = request(plan_type="nonprofit", add_ons=["X"], unpaid_balance_minor=5, status="updating", licenses=10,
                target_sku="M365_APPS_FOR_BUSINESS", source_sku="M365_BUSINESS_BASIC",
                extra_subscriptions=[second_subscription("M365_BUSINESS_BASIC")])
    reasons = evaluate(r, TenantView(40, service_health={"ONEDRIVE": "incident"}, upgrade_in_flight="ord-0"),
                       CATALOGUE)
    assert [x.code for x in reasons] == [
        "MORE_USERS_THAN_LICENSES", "LICENSES_BELOW_ASSIGNED_USERS", "NOT_FULLY_SET_UP_OR_SERVICE_UNAVAILABLE",
        "CHANGE_IN_PROGRESS_OR_CREDIT_CHECK_PENDING", "MULTIPLE_PLANS_SAME_PRODUCT", "GOVERNMENT_OR_NONPROFIT",
        "TEMPORARY_HIGH_VOLUME", "TARGET_PLAN_NOT_SUPPORTED", "HAS_ADD_ON", "UNPAID_BALANCE"]
    assert [x.retry_after for x in reasons][2:4] == ["PT3H", "PT1H"]


def test_cancelled_subscriptions_of_the_same_product_do_not_count():
    r = request(extra_subscriptions=[second_subscription(status="cancelled")])
    assert evaluate(r, TenantView(100), CATALOGUE) == []


def test_prepaid_with_enough_new_cost_forfeits_nothing():
    # 1 800 000 for 2026; on 2026-11-17, 45 of 365 days remain: 221 918 left, below the new cost.
    assert evaluate(request(prepaid=PREPAID, new_total_cost_minor=264_000), TenantView(100), CATALOGUE) == []


def test_acknowledged_forfeit_passes():
    r = request(prepaid=PREPAID, new_total_cost_minor=10_000, prepaid_forfeit_acknowledged=True)
    assert evaluate(r, TenantView(100), CATALOGUE) == []


def test_the_upgrade_itself_is_not_its_own_change_in_progress():
    assert evaluate(request(), TenantView(100, upgrade_in_flight="ord-1"), CATALOGUE) == []


def test_fewer_services_names_what_the_target_lacks():
    reasons = evaluate(request(source_sku="M365_BUSINESS_PREMIUM", target_sku="M365_BUSINESS_BASIC"),
                       TenantView(100), CATALOGUE)
    assert "lacks BOOKINGS, DEFENDER_BUSINESS, ENTRA_ID, INTUNE, OFFICE_DESKTOP" in reasons[0].message


def test_the_request_day_is_its_utc_day():
    """Issue 10, case 10: 22:30 at UTC−5 on 11-19 is 03:30 UTC on 11-20."""
    from planshift.domain.eligibility import request_date

    r = request()
    r["occurred_at"] = "2026-11-19T22:30:00-05:00"
    assert request_date(r) == date(2026, 11, 20)
    r["occurred_at"] = "2026-11-20T01:30:00+05:00"
    assert request_date(r) == date(2026, 11, 19)


def test_prepaid_forfeit_is_estimated_on_the_utc_day():
    """The forfeit estimate uses the UTC day: one day later in UTC is one day less of the term."""
    from planshift.domain.money import subscription_credit

    r = request(prepaid={"term_start": "2026-01-01", "term_end": "2027-01-01", "paid_minor": 3_650_000},
                new_total_cost_minor=1)
    r["occurred_at"] = "2026-11-19T22:30:00-05:00"
    reasons = evaluate(r, TenantView(100), CATALOGUE)
    utc = subscription_credit(r["tenant"]["subscriptions"][0], date(2026, 11, 20), 1).forfeit_minor
    assert f"About {utc} " in reasons[0].message and utc == 420_000 - 1  # 42 of 365 days of 3 650 000
