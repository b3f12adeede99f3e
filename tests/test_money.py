"""Money (CONTRACT.md §4 Settlement): exact, one half-up rounding, clamped days."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planshift.domain.money import (
    prepaid_credit,
    prorate,
    round_half_up,
    subscription_credit,
    unused_time_credit,
)


def test_the_contracts_worked_example():
    credit = unused_time_credit(125000, date(2026, 11, 1), date(2026, 12, 1), date(2026, 11, 17))
    assert (credit.unused_days, credit.period_days, credit.amount_minor) == (14, 30, 58333)
    assert credit.basis == "UNUSED_TIME"


def test_the_appendix_example():
    assert unused_time_credit(150000, date(2026, 11, 1), date(2026, 12, 1), date(2026, 11, 17)).amount_minor == 70000


@pytest.mark.parametrize("value,expected", [("0.5", 1), ("1.5", 2), ("2.5", 3), ("2.4999", 2), ("58333.333", 58333)])
def test_rounding_is_half_up_not_bankers(value, expected):
    assert round_half_up(Decimal(value)) == expected


@pytest.mark.parametrize("effective,unused,amount", [
    (date(2026, 11, 1), 30, 125000),   # the period's first day: the full amount
    (date(2026, 10, 20), 30, 125000),  # before the period: clamped to the full amount
    (date(2026, 11, 30), 1, 4167),     # the last day is still unused: 125000 / 30 = 4166.67
    (date(2026, 12, 1), 0, 0),         # the period's end (exclusive): nothing
    (date(2027, 1, 5), 0, 0),          # after the period: clamped to nothing
])
def test_edge_dates(effective, unused, amount):
    credit = unused_time_credit(125000, date(2026, 11, 1), date(2026, 12, 1), effective)
    assert (credit.unused_days, credit.amount_minor) == (unused, amount)


def test_february_and_leap_years():
    assert unused_time_credit(2800, date(2027, 2, 1), date(2027, 3, 1), date(2027, 2, 15)).amount_minor == 1400
    assert unused_time_credit(2900, date(2028, 2, 1), date(2028, 3, 1), date(2028, 2, 15)).amount_minor == 1500


def test_zero_decimal_currency_rounds_to_whole_units():
    # JPY has no minor unit below the yen: amounts are yen and round to whole yen.
    assert unused_time_credit(3125, date(2026, 11, 1), date(2026, 12, 1), date(2026, 11, 17)).amount_minor == 1458


def test_prepaid_checkout_rule():
    # 365 000 paid for 2026; on 2026-11-17, 45 days remain: 45 000 of value left.
    low = prepaid_credit(365_000, date(2026, 1, 1), date(2027, 1, 1), date(2026, 11, 17), 20_000)
    assert (low.amount_minor, low.forfeit_minor, low.basis) == (20_000, 25_000, "PREPAID_REMAINING")
    high = prepaid_credit(365_000, date(2026, 1, 1), date(2027, 1, 1), date(2026, 11, 17), 264_000)
    assert (high.amount_minor, high.forfeit_minor) == (45_000, 0)


def test_subscription_credit_picks_the_basis():
    period = {"start": "2026-11-01", "end": "2026-12-01", "billed_minor": 150000}
    assert subscription_credit({"current_period": period, "prepaid": None}, date(2026, 11, 17), 1).basis == "UNUSED_TIME"
    prepaid = {"term_start": "2026-01-01", "term_end": "2027-01-01", "paid_minor": 365000}
    assert subscription_credit({"current_period": period, "prepaid": prepaid}, date(2026, 11, 17), 10**9).amount_minor \
        == 45000


days = st.integers(min_value=1, max_value=800)
amounts = st.integers(min_value=0, max_value=10**12)
offsets = st.integers(min_value=-400, max_value=1200)


@given(amounts, days, offsets)
def test_a_credit_is_never_negative_nor_above_what_was_billed(billed, length, offset):
    start = date(2026, 1, 1)
    credit = unused_time_credit(billed, start, start + timedelta(days=length), start + timedelta(days=offset))
    assert 0 <= credit.amount_minor <= billed
    assert 0 <= credit.unused_days <= credit.period_days == length


@given(amounts, days)
def test_effective_on_the_first_day_gives_all_and_on_the_end_nothing(billed, length):
    start, end = date(2026, 1, 1), date(2026, 1, 1) + timedelta(days=length)
    assert unused_time_credit(billed, start, end, start).amount_minor == billed
    assert unused_time_credit(billed, start, end, end).amount_minor == 0


@given(amounts, days, offsets, amounts)
def test_prepaid_credit_and_forfeit_add_up_to_the_remaining_value(paid, length, offset, new_cost):
    start = date(2026, 1, 1)
    credit = prepaid_credit(paid, start, start + timedelta(days=length), start + timedelta(days=offset), new_cost)
    assert 0 <= credit.amount_minor <= min(paid, new_cost)
    assert credit.forfeit_minor >= 0
    assert credit.amount_minor + credit.forfeit_minor == prorate(paid, credit.unused_days, length) <= paid
