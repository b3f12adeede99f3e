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

from planshift.domain.reconciliation.owed import owed_credit


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
    old_charges  the charges of each upgrade's old subscription: `invoice_id, line_id, currency,
                 amount_minor, service_start, service_end, upgrade`
    new_charges  the same, of each upgrade's new subscription
    credit_lines the credit lines of issued credits: `invoice_id, line_id, issued_on, currency,
                 amount_minor, credit, upgrade, invoice` (`invoice`: a number per invoice_id)
    orphan_lines the credit lines whose `credit_id` planshift never issued: `tenant_id,
                 invoice_id, line_id, currency, amount_minor, credit_id`
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


CHARGE_COLUMNS = ["invoice_id", "line_id", "currency", "amount_minor", "service_start", "service_end"]
CREDIT_LINE_COLUMNS = ["invoice_id", "line_id", "issued_on", "currency", "amount_minor"]
ORPHAN_COLUMNS = ["tenant_id", "invoice_id", "line_id", "currency", "amount_minor", "credit_id"]


def _arrow(column: pd.Series) -> pa.ChunkedArray:
    array = pa.array(column, pa.string())
    return array if isinstance(array, pa.ChunkedArray) else pa.chunked_array([array], pa.string())


def codes(*columns: pd.Series) -> list[np.ndarray]:
    """Integer codes of string columns over one dictionary (one hashing pass, in Arrow's C++):
    equal strings get equal codes across all the columns; a missing value is -1."""
    chunks = [c for column in columns for c in _arrow(column).chunks]
    encoded = pa.chunked_array(chunks, pa.string()).dictionary_encode()
    flat = np.concatenate([c.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
                           for c in encoded.chunks]) if encoded.num_chunks else np.array([], np.int64)
    out, at = [], 0
    for column in columns:
        out.append(flat[at:at + len(column)])
        at += len(column)
    return out


def lookup(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """For each value code, the first row of `keys` with that code; -1 if none (or missing)."""
    size = int(max(values.max(initial=-1), keys.max(initial=-1))) + 1
    first = np.full(size + 1, -1, np.int64)  # slot `size` stays -1: where a missing value (-1) looks
    valid = np.flatnonzero(keys >= 0)[::-1]  # reversed: the first row of each key is written last
    first[keys[valid]] = valid
    return first[np.where(values >= 0, values, size)]


def first_rows(key_codes: np.ndarray) -> np.ndarray:
    """Whether each row is the first of its key (an event archived twice is one event)."""
    return lookup(key_codes, key_codes) == np.arange(len(key_codes))


def once_per_invoice(lines: pd.DataFrame, delivery: np.ndarray) -> pd.DataFrame:
    """§6 r2: an invoice counts once, whatever its `event_id`. `delivery` numbers each line's
    invoice delivery (the archived invoice event it came in, in archive order); the lines of
    the first delivery of each `invoice_id` are kept."""
    if len(lines) == 0:
        return lines
    (invoice,) = codes(lines["invoice_id"])
    first = np.full(invoice.max(initial=0) + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, invoice, delivery)
    keep = delivery == first[invoice]
    lines = lines.assign(invoice=invoice)  # a number per invoice_id, which `build` uses
    return lines if keep.all() else lines[keep].reset_index(drop=True)


def build(switches: pd.DataFrame, requests: pd.DataFrame, credits: pd.DataFrame, completed: pd.DataFrame,
          lines: pd.DataFrame, run_date: date) -> Ledger:
    """Put the archived events together (see `Ledger` for the columns each needs).

    `lines` are the invoice lines, one row per line with their invoice's `invoice_id,
    tenant_id, issued_on, currency`, already counted once per invoice (`once_per_invoice`,
    which also numbers them per invoice: `invoice`).
    Every kind of id is encoded once (`codes`), and rows are matched on those integers."""
    switch_ids, request_ids, credit_upgrades, completed_ids = codes(
        switches["upgrade_id"], requests["upgrade_id"], credits["upgrade_id"], completed["upgrade_id"])
    keep = first_rows(switch_ids)
    upgrades = switches[keep].reset_index(drop=True)
    switch_ids = switch_ids[keep]
    at = lookup(switch_ids, request_ids)  # the first request of each upgrade
    upgrades["has_request"] = at >= 0
    for column in ("period_start", "period_end", "billed_minor", "prepaid_term_start", "prepaid_term_end",
                   "prepaid_paid_minor"):
        taken = requests[column].take(np.maximum(at, 0)).reset_index(drop=True) if len(requests) \
            else pd.Series(pd.NA, index=upgrades.index, dtype=requests[column].dtype)
        upgrades[column] = taken.where(pd.Series(at >= 0), other=pd.NA)
    owed = owed_credit(upgrades)
    upgrades["owed_minor"], upgrades["owed_days"] = owed["credit_minor"], owed["unused_days"]

    credit_ids, line_credit_ids = codes(credits["credit_id"], lines["credit_id"])
    keep = first_rows(credit_ids)
    credits = credits[keep].reset_index(drop=True)
    credit_ids, credit_upgrades = credit_ids[keep], credit_upgrades[keep]
    credits["upgrade"] = lookup(credit_upgrades, switch_ids)
    first_credit = np.full(len(upgrades), -1, np.int64)
    linked = np.flatnonzero(credits["upgrade"].to_numpy() >= 0)[::-1]  # the earliest credit of each upgrade wins
    first_credit[credits["upgrade"].to_numpy()[linked]] = linked
    upgrades["credit"] = first_credit

    keep = first_rows(completed_ids)
    completed = completed[keep].reset_index(drop=True)
    completed["upgrade"] = lookup(completed_ids[keep], switch_ids)

    old_subs, new_subs, line_subs = codes(upgrades["old_subscription_id"], upgrades["new_subscription_id"],
                                          lines["subscription_id"])
    (invoice,) = [lines["invoice"].to_numpy()] if "invoice" in lines else codes(lines["invoice_id"])
    kind = lines["kind"].to_numpy()
    charge = kind == "charge"
    old_at = np.where(charge, lookup(line_subs, old_subs), -1)
    new_at = np.where(charge, lookup(line_subs, new_subs), -1)
    credit_at = np.where(kind == "credit", lookup(line_credit_ids, credit_ids), -1)
    orphan = (kind == "credit") & (credit_at < 0)
    old_charges = _placed(lines, old_at, CHARGE_COLUMNS, upgrade=old_at)
    new_charges = _placed(lines, new_at, CHARGE_COLUMNS, upgrade=new_at)
    credit_upgrade = np.where(credit_at >= 0, credits["upgrade"].to_numpy()[np.maximum(credit_at, 0)]
                              if len(credits) else -1, -1)
    credit_lines = _placed(lines, credit_at, CREDIT_LINE_COLUMNS, credit=credit_at, upgrade=credit_upgrade,
                           invoice=invoice)
    orphan_lines = lines.loc[orphan, ORPHAN_COLUMNS].reset_index(drop=True)
    return Ledger(upgrades, credits, completed, old_charges, new_charges, credit_lines, orphan_lines, run_date)


def _placed(lines: pd.DataFrame, rows: np.ndarray, columns: list[str], **numbers: np.ndarray) -> pd.DataFrame:
    """The lines that found a row (`rows` ≥ 0): `columns`, and each of `numbers` at those lines."""
    found = np.flatnonzero(rows >= 0)
    placed = lines[columns].take(found).reset_index(drop=True)
    for name, values in numbers.items():
        placed[name] = values[found]
    return placed
