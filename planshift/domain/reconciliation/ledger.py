"""What one reconciliation looks at, as plain frames: the `Ledger`, and how it is put together.

The checks (`checks.py`) read a `Ledger` and nothing else. Building it is the only join
work: each upgrade's switch, request terms and credit side by side, and every invoice line
placed against the upgrade it concerns. The frames are ordinary pandas DataFrames with
the columns named below (strings, `datetime64[ns]` dates at midnight, integer minor units);
`upgrade` and `credit` columns are row positions in `Ledger.upgrades` / `Ledger.credits`,
so a check takes an upgrade's value for a line with `ledger.upgrades[col].to_numpy()[rows]`.

CONTRACT.md §6 (r2) rules applied here, before any check:
- an invoice is identified by `invoice_id`: the same invoice delivered again counts once
  (its first delivery is kept), whatever its `event_id`;
- an event archived twice (same id) is one event: one switch per upgrade, one credit per
  `credit_id`, one completed status per upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from planshift.domain.reconciliation.owed import owed_credit

DAY = np.timedelta64(1, "D")


@dataclass
class Ledger:
    """One reconciliation's inputs, each a plain DataFrame.

    upgrades     one row per switched upgrade: `upgrade_id, tenant_id, old_subscription_id,
                 new_subscription_id, effective_date, currency, new_total_cost_minor`, the
                 request's terms (`has_request, period_start, period_end, billed_minor,
                 prepaid_term_start, prepaid_term_end, prepaid_paid_minor`), what the rules owe
                 (`owed_minor, owed_days`: the credit and the unused days it gives back) and
                 the first credit planshift issued (`credit`: its row in `credits`, -1 if none)
    credits      one row per issued credit: `credit_id, upgrade_id, tenant_id, subscription_id,
                 currency, amount_minor, unused_days, forfeit_minor, due_by, upgrade` (-1: a
                 credit of no switched upgrade)
    completed    one row per completed upgrade: `tenant_id, upgrade_id, currency, credit_minor,
                 forfeit_minor, upgrade`
    old_charges  the charges of each upgrade's old subscription: the invoice line columns
                 (`invoice_id, tenant_id, issued_on, currency, line_id, subscription_id, kind,
                 amount_minor, service_start, service_end, credit_id`) and `upgrade`
    new_charges  the same, of each upgrade's new subscription
    credit_lines the credit lines of issued credits: the line columns, `credit`, `upgrade`
    orphan_lines the credit lines whose `credit_id` planshift never issued
    run_date     the day the report is for
    """

    upgrades: pd.DataFrame
    credits: pd.DataFrame
    completed: pd.DataFrame
    old_charges: pd.DataFrame
    new_charges: pd.DataFrame
    credit_lines: pd.DataFrame
    orphan_lines: pd.DataFrame
    run_date: date

    @property
    def run(self) -> np.datetime64:
        return np.datetime64(self.run_date, "ns")


def positions(values: pd.Series, keys: pd.Series) -> np.ndarray:
    """For each value, the row of `keys` holding it (the first, if several), -1 if none:
    one hash lookup in Arrow's C++ (pandas would box every string)."""
    found = pc.index_in(pa.array(values), value_set=pa.array(keys))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def first_per(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """The first row of each `key` (an event archived twice is one event)."""
    codes = positions(frame[key], frame[key])  # a row's key points at the key's first row
    keep = codes == np.arange(len(frame))
    return frame if keep.all() else frame[keep].reset_index(drop=True)


def once_per_invoice(lines: pd.DataFrame, delivery: np.ndarray) -> pd.DataFrame:
    """§6 r2: an invoice counts once, whatever its `event_id`. `delivery` numbers each line's
    invoice delivery (the archived invoice event it came in, in archive order); the lines of
    the first delivery of each `invoice_id` are kept."""
    if len(lines) == 0:
        return lines
    frame = pd.DataFrame({"invoice_id": lines["invoice_id"], "delivery": delivery})
    first = frame.groupby("invoice_id", sort=False, observed=True)["delivery"].transform("min")
    keep = (frame["delivery"] == first).to_numpy()
    return lines if keep.all() else lines[keep].reset_index(drop=True)


def build(switches: pd.DataFrame, requests: pd.DataFrame, credits: pd.DataFrame, completed: pd.DataFrame,
          lines: pd.DataFrame, run_date: date) -> Ledger:
    """Put the archived events together (see `Ledger` for the columns each needs).

    `lines` are the invoice lines, one row per line with their invoice's `invoice_id,
    tenant_id, issued_on, currency`, already counted once per invoice (`once_per_invoice`)."""
    upgrades = first_per(switches, "upgrade_id").reset_index(drop=True)
    requests = first_per(requests, "upgrade_id")
    at = positions(upgrades["upgrade_id"], requests["upgrade_id"])
    terms = ["period_start", "period_end", "billed_minor", "prepaid_term_start", "prepaid_term_end",
             "prepaid_paid_minor"]
    upgrades["has_request"] = at >= 0
    for column in terms:
        taken = requests[column].take(np.maximum(at, 0)).reset_index(drop=True) if len(requests) \
            else pd.Series(pd.NA, index=upgrades.index, dtype=requests[column].dtype)
        upgrades[column] = taken.where(pd.Series(at >= 0), other=pd.NA)
    owed = owed_credit(upgrades)
    upgrades["owed_minor"], upgrades["owed_days"] = owed["credit_minor"], owed["unused_days"]

    credits = first_per(credits, "credit_id").reset_index(drop=True)
    credits["upgrade"] = positions(credits["upgrade_id"], upgrades["upgrade_id"])
    first_credit = np.full(len(upgrades), -1, np.int64)
    linked = credits["upgrade"].to_numpy()
    for row in np.flatnonzero(linked >= 0)[::-1]:  # the earliest credit of each upgrade wins
        first_credit[linked[row]] = row
    upgrades["credit"] = first_credit

    completed = first_per(completed, "upgrade_id").reset_index(drop=True)
    completed["upgrade"] = positions(completed["upgrade_id"], upgrades["upgrade_id"])

    charges = lines[(lines["kind"] == "charge").to_numpy()].reset_index(drop=True)
    old_charges = _placed(charges, positions(charges["subscription_id"], upgrades["old_subscription_id"]), "upgrade")
    new_charges = _placed(charges, positions(charges["subscription_id"], upgrades["new_subscription_id"]), "upgrade")
    credited = lines[(lines["kind"] == "credit").to_numpy()].reset_index(drop=True)
    issued_as = positions(credited["credit_id"], credits["credit_id"])
    credit_lines = _placed(credited, issued_as, "credit")
    credit_lines["upgrade"] = credits["upgrade"].to_numpy()[credit_lines["credit"].to_numpy()] \
        if len(credit_lines) else np.array([], np.int64)
    orphan_lines = credited[issued_as < 0].reset_index(drop=True)
    return Ledger(upgrades, credits, completed, old_charges, new_charges, credit_lines, orphan_lines, run_date)


def _placed(lines: pd.DataFrame, rows: np.ndarray, column: str) -> pd.DataFrame:
    """The lines that found a row (`rows` ≥ 0), with that row in `column`."""
    found = rows >= 0
    placed = lines[found].reset_index(drop=True)
    placed[column] = rows[found]
    return placed
