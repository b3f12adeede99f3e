"""The credit the contract's rules owe each upgrade (CONTRACT.md §4), recomputed for finance
from the archived request and switch, independently of what settlement computed.

Unused time:  unused_days = clamp(period_end − effective_date, 0, period_days),
              credit = round_half_up(billed_minor × unused_days / period_days)
Prepaid:      remaining = round_half_up(paid_minor × remaining_days / term_days),
              credit = min(remaining, new_total_cost_minor)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DAY = np.timedelta64(1, "D")


def round_half_up_div(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """round_half_up(numerator / denominator) for non-negative integers, exactly (no floats)."""
    denominator = np.where(denominator > 0, denominator, 1)
    return (2 * numerator + denominator) // (2 * denominator)


def days(later, earlier) -> np.ndarray:
    """Whole days from `earlier` to `later` (datetime64 arrays or Series)."""
    return ((np.asarray(later, "datetime64[ns]") - np.asarray(earlier, "datetime64[ns]")) // DAY).astype(np.int64)


def owed_credit(upgrades: pd.DataFrame) -> pd.DataFrame:
    """Per upgrade: `credit_minor` and `unused_days` (the days `[effective_date, end)` it gives
    back); missing (NA) where the request was not archived."""
    known = upgrades["has_request"].to_numpy()
    prepaid = upgrades["prepaid_term_start"].notna().to_numpy() & known
    start = np.where(prepaid, upgrades["prepaid_term_start"].to_numpy("datetime64[ns]"),
                     upgrades["period_start"].to_numpy("datetime64[ns]"))
    end = np.where(prepaid, upgrades["prepaid_term_end"].to_numpy("datetime64[ns]"),
                   upgrades["period_end"].to_numpy("datetime64[ns]"))
    paid = np.where(prepaid, upgrades["prepaid_paid_minor"].to_numpy("float64", na_value=0),
                    upgrades["billed_minor"].to_numpy("float64", na_value=0)).astype(np.int64)
    with np.errstate(invalid="ignore"):  # an upgrade without its request has no dates (NaT): masked here
        whole = np.where(known, days(end, start), 0).clip(min=0)
        unused = np.where(known, days(end, upgrades["effective_date"]), 0).clip(min=0)
    unused = np.minimum(unused, whole)
    remaining = round_half_up_div(paid * unused, whole)
    cost = upgrades["new_total_cost_minor"].to_numpy("float64", na_value=0).astype(np.int64)
    credit = np.where(prepaid, np.minimum(remaining, cost), remaining)
    return pd.DataFrame({
        "credit_minor": pd.Series(np.where(known, credit, 0), dtype="Int64").mask(~known),
        "unused_days": pd.Series(np.where(known, unused, 0), dtype="Int64").mask(~known),
    })
