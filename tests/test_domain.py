"""Pure domain pieces of intake: the credit-check gate and batch planning."""

from __future__ import annotations

from datetime import date

import pytest

from planshift.domain.batches import batch_events, split
from planshift.domain.credit_check import add_business_days, credit_check_reason
from planshift.domain.money import prepaid_credit, unused_time_credit
from planshift.schema import violations
from producers.samples import upgrade_request


@pytest.mark.parametrize("payment,cost,expected", [
    ("card", 999_999, None),
    ("card", 1_000_000, "COST_THRESHOLD"),
    ("invoice", 10, "INVOICE_PAYMENT"),
    ("invoice", 5_000_000, "INVOICE_PAYMENT"),
])
def test_credit_check_needed(payment, cost, expected):
    r = upgrade_request(payment_method=payment, new_total_cost_minor=cost)
    assert credit_check_reason(r, 1_000_000) == expected


@pytest.mark.parametrize("day,expected", [
    (date(2026, 11, 16), date(2026, 11, 18)),  # Monday → Wednesday
    (date(2026, 11, 19), date(2026, 11, 23)),  # Thursday → Monday
    (date(2026, 11, 20), date(2026, 11, 24)),  # Friday → Tuesday
    (date(2026, 11, 21), date(2026, 11, 24)),  # Saturday → Tuesday
])
def test_due_by_is_two_business_days_later(day, expected):
    assert add_business_days(day, 2) == expected


def test_batches_cover_every_user_once_and_are_valid_events():
    users = [f"u{i}" for i in range(1234)]
    request = upgrade_request("contoso", "ord-9")
    source = request["tenant"]["subscriptions"][0]
    events = list(batch_events(request, source, users, 500, "2026-11-17T10:00:00Z"))
    assert [len(e["user_ids"]) for e in events] == [500, 500, 234]
    assert [u for e in events for u in e["user_ids"]] == users
    assert {e["batch_count"] for e in events} == {3}
    assert events[0]["terms"]["users_total"] == 1234 and events[0]["source_sku"] == "M365_BUSINESS_STANDARD"
    assert [e["event_id"] for e in events] == ["ord-9:batch:0", "ord-9:batch:1", "ord-9:batch:2"]
    for e in events:
        assert violations("license.batches", e) == []


def test_no_users_still_makes_one_batch():
    assert split([], 500) == [[]]


def test_contract_worked_examples():
    c = unused_time_credit(125000, date(2026, 11, 1), date(2026, 12, 1), date(2026, 11, 17))
    assert (c.amount_minor, c.unused_days, c.period_days) == (58333, 14, 30)
    c = unused_time_credit(150000, date(2026, 11, 1), date(2026, 12, 1), date(2026, 11, 17))
    assert c.amount_minor == 70000
    p = prepaid_credit(365_000, date(2026, 1, 1), date(2027, 1, 1), date(2026, 11, 17), 20_000)
    assert (p.amount_minor, p.forfeit_minor) == (20_000, 45_000 - 20_000)
