"""The reconciliation checks of CONTRACT.md §6 (r2), one function per check code, in §6's order.

The billing system bills **in advance**: the old plan's current period was charged at its
start, the credit gives its unused days `[effective_date, period_end)` back, the new plan
is billed from `effective_date`. Each check reads the `Ledger` (plain frames, see
`ledger.py`) and returns its findings as a frame of `FINDING_COLUMNS` (a subset; the rest
is filled in by `reports.findings_table`). Amounts of different currencies are never summed
together or compared. To add a check: write one more function here and list it in `CHECKS`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from planshift.domain.reconciliation.ledger import Ledger
from planshift.domain.reconciliation.owed import days, round_half_up_div
from planshift.domain.settlement import CREDIT_DUE as SETTLEMENT_CREDIT_DUE

CREDIT_DUE = np.timedelta64(SETTLEMENT_CREDIT_DUE.days, "D")  # the due period settlement gives every credit


def finding(code: str, rows: int | pd.Index, **columns) -> pd.DataFrame:
    """Findings of one check: `code` on every row, then the given columns."""
    frame = pd.DataFrame(index=range(rows) if isinstance(rows, int) else rows)
    frame["check_code"] = code
    for name, value in columns.items():
        frame[name] = value.to_numpy() if isinstance(value, pd.Series) else value
    return frame.reset_index(drop=True)


def at(ledger_frame: pd.DataFrame, column: str, rows) -> np.ndarray:
    """`ledger_frame[column]` at row positions `rows` (an upgrade's or a credit's value for each line)."""
    return ledger_frame[column].to_numpy()[np.asarray(rows, np.int64)]


def prorate(amount: np.ndarray, part_days: np.ndarray, whole_days: np.ndarray) -> np.ndarray:
    """round_half_up(amount × part / whole) for charges (amount ≥ 0), exactly."""
    return round_half_up_div(np.asarray(amount, np.int64) * part_days, whole_days)


def _dates(values) -> np.ndarray:
    return np.asarray(values, "datetime64[ns]")


# -- OVERLAP ---------------------------------------------------------------------------------
def overlap(ledger: Ledger) -> pd.DataFrame:
    """The old subscription is charged for service days on or after `effective_date` beyond
    the unused days its credit gives back (its next period billed after the switch, a day
    charged twice). The days the rules credit are `owed_days` (from the request), else the
    issued credit's `unused_days`. One finding per upgrade and currency; `actual_minor` is
    the value of the days too many, at the rate those days were charged."""
    charges = ledger.old_charges
    if len(charges) == 0:
        return finding("OVERLAP", 0)
    effective = at(ledger.upgrades, "effective_date", charges["upgrade"])
    start, end = _dates(charges["service_start"]), _dates(charges["service_end"])
    charged_days = days(end, np.maximum(start, effective)).clip(min=0)
    value = prorate(charges["amount_minor"].to_numpy("int64"), charged_days, days(end, start))
    per = pd.DataFrame({"upgrade": charges["upgrade"], "currency": charges["currency"], "days": charged_days,
                        "value": value, "end": end, "invoice_id": charges["invoice_id"],
                        "line_id": charges["line_id"]})
    per = per[per["days"] > 0]
    last = per.sort_values("end", kind="stable").groupby(["upgrade", "currency"], observed=True).last()
    sums = per.groupby(["upgrade", "currency"], observed=True)[["days", "value"]].sum()
    upgrade = sums.index.get_level_values("upgrade").to_numpy()
    credited = credited_days(ledger)[upgrade]
    over = sums["days"].to_numpy() - credited
    hit = over > 0
    rows, over = upgrade[hit], over[hit]
    worth = round_half_up_div(sums["value"].to_numpy()[hit] * over, sums["days"].to_numpy()[hit])
    return finding("OVERLAP", len(rows), upgrade=rows, currency=sums.index.get_level_values("currency")[hit],
                   expected_minor=0, actual_minor=worth, delta_minor=worth, overlap_days=over,
                   invoice_id=last["invoice_id"].to_numpy()[hit], line_id=last["line_id"].to_numpy()[hit],
                   details=[f"old plan charged for {d + c} days on or after the switch; its credit gives back {c}"
                            for d, c in zip(over, credited[hit])])


def credited_days(ledger: Ledger) -> np.ndarray:
    """Per upgrade: the unused days its credit gives back, by the rules (else as issued; else 0)."""
    upgrades = ledger.upgrades
    owed = upgrades["owed_days"].to_numpy("float64", na_value=np.nan)
    credit = upgrades["credit"].to_numpy()
    issued = np.where(credit >= 0, at(ledger.credits, "unused_days", np.maximum(credit, 0))
                      if len(ledger.credits) else 0, 0)
    issued = pd.Series(issued).fillna(0).to_numpy("int64")
    return np.where(np.isnan(owed), issued, np.nan_to_num(owed)).astype(np.int64)


# -- NEW_BILLING_GAP ---------------------------------------------------------------------
def new_billing_gap(ledger: Ledger) -> pd.DataFrame:
    """The new subscription's first charge starts after `effective_date`; `expected_minor`
    is the value of the days not billed, `overlap_days` the gap as a negative number."""
    first = _first_charges(ledger.new_charges)
    effective = at(ledger.upgrades, "effective_date", first["upgrade"])
    start, end = _dates(first["service_start"]), _dates(first["service_end"])
    gap = days(start, effective)
    late = gap > 0
    first, gap, start, end = first[late], gap[late], start[late], end[late]
    unbilled = prorate(first["amount_minor"].to_numpy("int64"), gap, days(end, start))
    return finding("NEW_BILLING_GAP", len(first), upgrade=first["upgrade"], currency=first["currency"],
                   expected_minor=unbilled, actual_minor=0, delta_minor=-unbilled, overlap_days=-gap,
                   invoice_id=first["invoice_id"], line_id=first["line_id"],
                   details=[f"new plan first billed from {d}" for d in np.datetime_as_string(start, "D")])


def _first_charges(charges: pd.DataFrame) -> pd.DataFrame:
    """Each upgrade's earliest charge of its new subscription."""
    return charges.sort_values(["upgrade", "service_start"], kind="stable").drop_duplicates("upgrade")


# -- NEW_BILLING_EARLY -------------------------------------------------------------------
def new_billing_early(ledger: Ledger) -> pd.DataFrame:
    """(r2) The new subscription is charged for service before `effective_date` (double
    billing): `overlap_days` counts those days, `actual_minor` their value."""
    charges = ledger.new_charges
    effective = at(ledger.upgrades, "effective_date", charges["upgrade"])
    start, end = _dates(charges["service_start"]), _dates(charges["service_end"])
    early_days = days(np.minimum(end, effective), start).clip(min=0)
    early = early_days > 0
    charges, early_days = charges[early], early_days[early]
    value = prorate(charges["amount_minor"].to_numpy("int64"), early_days, days(end[early], start[early]))
    return finding("NEW_BILLING_EARLY", len(charges), upgrade=charges["upgrade"], currency=charges["currency"],
                   expected_minor=0, actual_minor=value, delta_minor=value, overlap_days=early_days,
                   invoice_id=charges["invoice_id"], line_id=charges["line_id"],
                   details=[f"new plan charged from {d}, before the switch"
                            for d in np.datetime_as_string(start[early], "D")])


# -- MISSING_CREDIT ----------------------------------------------------------------------
def missing_credit(ledger: Ledger) -> pd.DataFrame:
    """A credit past `due_by` on no invoice; or (r2) a credit the rules owe (recomputed > 0)
    that planshift never issued, once its due date (`effective_date` + 30 days) has passed."""
    credits = ledger.credits
    invoiced = np.zeros(len(credits), bool)
    invoiced[ledger.credit_lines["credit"].to_numpy()] = True
    due = _dates(credits["due_by"])
    lost = ~invoiced & (due < ledger.run)
    lost_credits = credits[lost]
    upgrades = ledger.upgrades
    owed = upgrades["owed_minor"].to_numpy("float64", na_value=0).astype(np.int64)
    owed_due = _dates(upgrades["effective_date"]) + CREDIT_DUE
    never = (upgrades["credit"].to_numpy() < 0) & (owed > 0) & (owed_due < ledger.run)
    never_issued = upgrades[never]
    return pd.concat([
        finding("MISSING_CREDIT", len(lost_credits), upgrade=lost_credits["upgrade"],
                credit=np.arange(len(credits))[lost], currency=lost_credits["currency"],
                expected_minor=lost_credits["amount_minor"], actual_minor=0,
                delta_minor=-lost_credits["amount_minor"], due_by=due[lost],
                days_late=days(np.full(lost.sum(), ledger.run), due[lost]),
                details="credit past its due date on no invoice"),
        finding("MISSING_CREDIT", len(never_issued), upgrade=np.flatnonzero(never),
                credit_id=never_issued["upgrade_id"] + ":credit", currency=never_issued["currency"],
                expected_minor=owed[never], actual_minor=0, delta_minor=-owed[never], due_by=owed_due[never],
                days_late=days(np.full(never.sum(), ledger.run), owed_due[never]),
                details="the rules owe a credit that planshift never issued"),
    ], ignore_index=True)


# -- per credit and invoice: what LATE, AMOUNT, DUPLICATE and CURRENCY look at -----------
def credit_invoices(ledger: Ledger) -> pd.DataFrame:
    """One row per (issued credit, invoice carrying it): the invoice's date and currency, the
    credit's lines on it summed (`invoiced_minor`, positive), its first line, and whether
    it is the credit's first invoice (earliest issued, then by invoice_id)."""
    lines = ledger.credit_lines
    per = pd.DataFrame({"credit": lines["credit"], "invoice": lines["invoice"],
                        "invoiced_minor": -lines["amount_minor"].to_numpy("int64")})
    grouped = per.groupby(["credit", "invoice"], sort=False)
    first_line = grouped.cumcount().to_numpy() == 0
    table = grouped["invoiced_minor"].sum().reset_index()
    firsts = lines[first_line].set_index(["credit", "invoice"])  # the invoice's columns, from its first line
    table = table.join(firsts[["invoice_id", "issued_on", "currency", "line_id"]], on=["credit", "invoice"])
    table = table.sort_values(["credit", "issued_on", "invoice_id"], kind="stable").reset_index(drop=True)
    table = table.drop(columns="invoice")
    table["first_invoice"] = ~table["credit"].duplicated()
    return table


# -- LATE_CREDIT -------------------------------------------------------------------------
def late_credit(ledger: Ledger, invoices: pd.DataFrame) -> pd.DataFrame:
    """A credit on an invoice issued after its `due_by`."""
    due = at(ledger.credits, "due_by", invoices["credit"])
    late = _dates(invoices["issued_on"]) > due
    rows = invoices[late]
    return finding("LATE_CREDIT", len(rows), credit=rows["credit"], currency=rows["currency"],
                   expected_minor=at(ledger.credits, "amount_minor", rows["credit"]),
                   actual_minor=rows["invoiced_minor"], delta_minor=0, invoice_id=rows["invoice_id"],
                   line_id=rows["line_id"], due_by=due[late], days_late=days(rows["issued_on"], due[late]),
                   details=[f"credit invoiced {d}" for d in np.datetime_as_string(_dates(rows["issued_on"]), "D")])


# -- AMOUNT_MISMATCH ---------------------------------------------------------------------
def amount_mismatch(ledger: Ledger, invoices: pd.DataFrame) -> pd.DataFrame:
    """The credit on its first invoice (its lines summed, in the issued currency only) ≠ the
    issued credit; or the issued credit ≠ the credit the rules owe."""
    credits = ledger.credits
    same = invoices["first_invoice"].to_numpy() & (invoices["currency"].to_numpy()
                                                   == at(credits, "currency", invoices["credit"]))
    first = invoices[same]
    issued = at(credits, "amount_minor", first["credit"]).astype(np.int64)
    wrong = first["invoiced_minor"].to_numpy() != issued
    billed = first[wrong]
    linked = credits[credits["upgrade"].to_numpy() >= 0]
    owed = at(ledger.upgrades, "owed_minor", linked["upgrade"])
    known = ~pd.isna(owed)
    off = known & (linked["amount_minor"].to_numpy("float64") != np.where(known, owed, 0).astype("float64"))
    recomputed = linked[off]
    owed_off = owed[off].astype(np.int64)
    return pd.concat([
        finding("AMOUNT_MISMATCH", len(billed), credit=billed["credit"], currency=billed["currency"],
                expected_minor=issued[wrong], actual_minor=billed["invoiced_minor"],
                delta_minor=billed["invoiced_minor"].to_numpy() - issued[wrong], invoice_id=billed["invoice_id"],
                line_id=billed["line_id"], details="invoiced credit differs from the issued credit"),
        finding("AMOUNT_MISMATCH", len(recomputed), credit=np.flatnonzero(credits["upgrade"].to_numpy() >= 0)[off],
                currency=recomputed["currency"], expected_minor=owed_off, actual_minor=recomputed["amount_minor"],
                delta_minor=recomputed["amount_minor"].to_numpy("int64") - owed_off,
                details="issued credit differs from the credit the rules give"),
    ], ignore_index=True)


# -- DUPLICATE_CREDIT --------------------------------------------------------------------
def duplicate_credit(ledger: Ledger, invoices: pd.DataFrame) -> pd.DataFrame:
    """One credit on more than one invoice (a re-delivered invoice is one invoice: counted
    once), or more than one credit issued for one upgrade."""
    extra = invoices[~invoices["first_invoice"].to_numpy()]
    times = invoices.groupby("credit", observed=True).size()
    credits = ledger.credits
    linked = credits["upgrade"].to_numpy()
    second = (linked >= 0) & (ledger.upgrades["credit"].to_numpy()[np.maximum(linked, 0)] != np.arange(len(credits)))
    twice = credits[second]
    return pd.concat([
        finding("DUPLICATE_CREDIT", len(extra), credit=extra["credit"], currency=extra["currency"],
                expected_minor=0, actual_minor=extra["invoiced_minor"], delta_minor=extra["invoiced_minor"],
                invoice_id=extra["invoice_id"], line_id=extra["line_id"],
                details=[f"credit on {times[c]} invoices" for c in extra["credit"]]),
        finding("DUPLICATE_CREDIT", len(twice), credit=np.flatnonzero(second), currency=twice["currency"],
                expected_minor=0, actual_minor=twice["amount_minor"], delta_minor=twice["amount_minor"],
                details="more than one credit issued for the upgrade"),
    ], ignore_index=True)


# -- ORPHAN_CREDIT -----------------------------------------------------------------------
def orphan_credit(ledger: Ledger) -> pd.DataFrame:
    """An invoice credit line whose `credit_id` planshift never issued."""
    lines = ledger.orphan_lines
    amount = -lines["amount_minor"].to_numpy("int64")
    return finding("ORPHAN_CREDIT", len(lines), tenant_id=lines["tenant_id"], currency=lines["currency"],
                   expected_minor=0, actual_minor=amount, delta_minor=amount, credit_id=lines["credit_id"],
                   invoice_id=lines["invoice_id"], line_id=lines["line_id"],
                   details="credit line for a credit planshift never issued")


# -- CURRENCY_MISMATCH -------------------------------------------------------------------
def currency_mismatch(ledger: Ledger, invoices: pd.DataFrame) -> pd.DataFrame:
    """A credit invoiced in another currency than issued. The invoiced amount is reported in
    its own currency (the finding's `currency`), never compared to the issued amount."""
    issued_in = at(ledger.credits, "currency", invoices["credit"])
    other = invoices["currency"].to_numpy() != issued_in
    rows = invoices[other]
    issued = at(ledger.credits, "amount_minor", rows["credit"])
    return finding("CURRENCY_MISMATCH", len(rows), credit=rows["credit"], currency=rows["currency"],
                   expected_minor=pd.NA, actual_minor=rows["invoiced_minor"], delta_minor=0,
                   invoice_id=rows["invoice_id"], line_id=rows["line_id"],
                   details=[f"issued as {a} {c}, invoiced as {b} {d}" for a, c, b, d in
                            zip(issued, issued_in[other], rows["invoiced_minor"], rows["currency"])])


# -- PREPAID_FORFEIT (info) --------------------------------------------------------------
def prepaid_forfeit(ledger: Ledger) -> pd.DataFrame:
    """Prepaid time forfeited at the upgrade, with the amount (information, not an error)."""
    done = ledger.completed
    rows = done[done["forfeit_minor"].fillna(0).to_numpy() > 0]
    return finding("PREPAID_FORFEIT", len(rows), upgrade=rows["upgrade"], tenant_id=rows["tenant_id"],
                   upgrade_id=rows["upgrade_id"], currency=rows["currency"], expected_minor=0,
                   actual_minor=rows["forfeit_minor"], delta_minor=rows["forfeit_minor"],
                   details="prepaid time forfeited at upgrade")


def run_checks(ledger: Ledger) -> list[pd.DataFrame]:
    """Every check, in §6's order."""
    invoices = credit_invoices(ledger)
    return [
        overlap(ledger),
        new_billing_gap(ledger),
        new_billing_early(ledger),
        missing_credit(ledger),
        late_credit(ledger, invoices),
        amount_mismatch(ledger, invoices),
        duplicate_credit(ledger, invoices),
        orphan_credit(ledger),
        currency_mismatch(ledger, invoices),
        prepaid_forfeit(ledger),
    ]


CHECK_CODES = ("OVERLAP", "NEW_BILLING_GAP", "NEW_BILLING_EARLY", "MISSING_CREDIT", "LATE_CREDIT", "AMOUNT_MISMATCH",
               "DUPLICATE_CREDIT", "ORPHAN_CREDIT", "CURRENCY_MISMATCH", "PREPAID_FORFEIT")
INFO_CODES = frozenset({"PREPAID_FORFEIT"})
