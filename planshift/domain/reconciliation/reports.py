"""The three outputs for finance (CONTRACT.md §6): findings, upgrades and summary tables.

`findings_table` turns the checks' rows into the contract's columns (each row's upgrade
and credit looked up by position in the `Ledger`), `upgrades_table` says per completed
upgrade whether it is `MATCHED`, `OPEN` or `PENDING`, and `summary_table` counts and sums
per check and currency. Rows are sorted, so the same inputs give identical files.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from planshift.domain.reconciliation.checks import CHECK_CODES, CREDIT_DUE, INFO_CODES
from planshift.domain.reconciliation.ledger import Ledger

FINDING_COLUMNS = ["run_date", "tenant_id", "upgrade_id", "check_code", "severity", "currency", "expected_minor",
                   "actual_minor", "delta_minor", "overlap_days", "credit_id", "invoice_id", "line_id",
                   "effective_date", "due_by", "days_late", "details"]
UPGRADE_COLUMNS = ["run_date", "tenant_id", "upgrade_id", "effective_date", "currency", "credit_minor",
                   "forfeit_minor", "findings", "status"]
SUMMARY_COLUMNS = ["run_date", "check_code", "currency", "count", "delta_minor"]
STRING_COLUMNS = ("tenant_id", "upgrade_id", "check_code", "severity", "currency", "credit_id", "invoice_id",
                  "line_id", "details")
INTEGER_COLUMNS = ("expected_minor", "actual_minor", "delta_minor", "overlap_days", "days_late")


def _fill(table: pd.DataFrame, column: str, source: pd.DataFrame, source_column: str, rows: np.ndarray) -> None:
    """Where `table[column]` is missing and `rows` ≥ 0: take `source[source_column]` at `rows`."""
    wanted = (rows >= 0) & table[column].isna().to_numpy()
    if not wanted.any():
        return
    values = source[source_column].to_numpy()[rows[wanted]]
    column_values = np.array(table[column].astype(object).tolist(), dtype=object)
    column_values[wanted] = values
    table[column] = column_values


def _positions(table: pd.DataFrame, column: str) -> np.ndarray:
    if column not in table:
        return np.full(len(table), -1, np.int64)
    return table[column].astype("float64").fillna(-1).to_numpy().astype(np.int64)


def findings_table(ledger: Ledger, parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["check_code"])
    for column in FINDING_COLUMNS:
        if column not in table:
            table[column] = pd.NA
    credit = _positions(table, "credit")
    upgrade = _positions(table, "upgrade")
    if len(ledger.credits):
        via_credit = np.where(credit >= 0, ledger.credits["upgrade"].to_numpy()[np.maximum(credit, 0)], -1)
        upgrade = np.where(upgrade >= 0, upgrade, via_credit)
        for column in ("credit_id", "tenant_id", "upgrade_id", "due_by"):
            _fill(table, column, ledger.credits, column, credit)
    for column in ("upgrade_id", "tenant_id", "effective_date"):
        _fill(table, column, ledger.upgrades, column, upgrade)
    table["severity"] = np.where(table["check_code"].isin(INFO_CODES), "info", "error")
    table["run_date"] = pd.Timestamp(ledger.run_date)
    table = table[FINDING_COLUMNS].copy()
    for column in INTEGER_COLUMNS:
        table[column] = pd.array(table[column].astype(object).where(table[column].notna(), None), dtype="Int64")
    for column in ("effective_date", "due_by"):
        table[column] = pd.to_datetime(table[column])
    for column in STRING_COLUMNS:
        table[column] = table[column].astype("string[pyarrow]")
    return sort_rows(table, ["check_code", "tenant_id", "upgrade_id", "credit_id", "invoice_id", "line_id"],
                     nulls_first=True)


def upgrades_table(ledger: Ledger, findings: pd.DataFrame) -> pd.DataFrame:
    """One row per completed upgrade: `OPEN` with any error finding; `PENDING` while a credit
    that is issued or owed is on no invoice and not yet due; else `MATCHED`."""
    done = ledger.completed
    upgrade = done["upgrade"].to_numpy()
    known = upgrade >= 0
    row = np.maximum(upgrade, 0)
    upgrades = ledger.upgrades
    table = pd.DataFrame({"tenant_id": done["tenant_id"], "upgrade_id": done["upgrade_id"],
                          "currency": done["currency"], "credit_minor": done["credit_minor"],
                          "forfeit_minor": done["forfeit_minor"]})
    effective = upgrades["effective_date"].to_numpy()[row] if len(upgrades) else np.array([], "datetime64[ns]")
    table["effective_date"] = np.where(known, effective, np.datetime64("NaT"))
    errors = findings.loc[(findings["severity"] == "error").to_numpy(), "upgrade_id"].value_counts()
    table["findings"] = table["upgrade_id"].map(errors).fillna(0).astype("int64").to_numpy()

    invoiced = np.zeros(len(ledger.credits), bool)
    invoiced[ledger.credit_lines["credit"].to_numpy()] = True
    credit = upgrades["credit"].to_numpy()[row] if len(upgrades) else np.array([], np.int64)
    has_credit = known & (credit >= 0)
    credit_row = np.maximum(credit, 0)
    credit_invoiced = np.where(has_credit, invoiced[credit_row] if len(invoiced) else False, False)
    credit_due = np.where(has_credit, ledger.credits["due_by"].to_numpy()[credit_row] if len(ledger.credits)
                          else np.datetime64("NaT"), np.datetime64("NaT"))
    owed = upgrades["owed_minor"].to_numpy("float64", na_value=0)[row] if len(upgrades) else np.array([])
    issued_amount = np.where(has_credit, ledger.credits["amount_minor"].to_numpy("float64")[credit_row]
                             if len(ledger.credits) else 0, 0)
    waiting_issued = has_credit & (issued_amount > 0) & ~credit_invoiced & ~(credit_due < ledger.run)
    owed_due = table["effective_date"].to_numpy("datetime64[ns]") + CREDIT_DUE
    waiting_owed = known & ~has_credit & (owed > 0) & ~(owed_due < ledger.run)
    table["status"] = np.where(table["findings"] > 0, "OPEN",
                               np.where(waiting_issued | waiting_owed, "PENDING", "MATCHED"))
    table.insert(0, "run_date", pd.Timestamp(ledger.run_date))
    table = table[UPGRADE_COLUMNS]
    for column in ("tenant_id", "upgrade_id", "currency", "status"):
        table[column] = table[column].astype("string[pyarrow]")
    for column in ("credit_minor", "forfeit_minor"):
        table[column] = table[column].astype("Int64")
    return sort_rows(table, ["tenant_id", "upgrade_id"])


def summary_table(findings: pd.DataFrame, run_date: date) -> pd.DataFrame:
    grouped = findings.groupby(["check_code", "currency"], dropna=False, sort=True).agg(
        count=("check_code", "size"), delta_minor=("delta_minor", "sum")).reset_index()
    grouped.insert(0, "run_date", pd.Timestamp(run_date))
    grouped["count"] = grouped["count"].astype("int64")
    grouped["delta_minor"] = grouped["delta_minor"].astype("Int64")
    for column in ("check_code", "currency"):
        grouped[column] = grouped[column].astype("string[pyarrow]")
    order = {code: i for i, code in enumerate(CHECK_CODES)}
    grouped = grouped.iloc[np.lexsort((grouped["currency"].fillna("").to_numpy(),
                                       grouped["check_code"].map(order).to_numpy()))] if len(grouped) else grouped
    return grouped.reset_index(drop=True)[SUMMARY_COLUMNS]


def sort_rows(frame: pd.DataFrame, by: list[str], nulls_first: bool = False) -> pd.DataFrame:
    """frame sorted by `by`, stably, as one Arrow sort of the key columns."""
    keys = pa.table({name: pa.array(frame[name]) for name in by})
    nulls = "at_start" if nulls_first else "at_end"
    order = pc.sort_indices(keys, sort_keys=[(name, "ascending", nulls) for name in by])
    return frame.take(order.to_numpy()).reset_index(drop=True)
