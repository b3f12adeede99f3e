"""Reconciliation checks (CONTRACT.md §6): pure functions over DataFrames.

Inputs are the archived events as of the run date, as plain DataFrames (see
`jobs/reconcile.py` for how they are read): `switches`, `credits`, `requests`,
`completed` (completed statuses) and `lines` (invoice lines, one row per line, with
their invoice's `invoice_id`, `tenant_id`, `issued_on` and `currency`). Dates are
`datetime64[ns]` at midnight; amounts are int64 minor units. Every check returns rows
of the findings table; `upgrades_table` and `summary_table` derive the other outputs.
The expected credit is recomputed here from the archived request and switch with the
contract's formula, independently of what settlement computed.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

FINDING_COLUMNS = ["run_date", "tenant_id", "upgrade_id", "check_code", "severity", "currency", "expected_minor",
                   "actual_minor", "delta_minor", "overlap_days", "credit_id", "invoice_id", "line_id",
                   "effective_date", "due_by", "days_late", "details"]
UPGRADE_COLUMNS = ["run_date", "tenant_id", "upgrade_id", "effective_date", "currency", "credit_minor",
                   "forfeit_minor", "findings", "status"]
SUMMARY_COLUMNS = ["run_date", "check_code", "currency", "count", "delta_minor"]
CHECK_CODES = ("OVERLAP", "NEW_BILLING_GAP", "MISSING_CREDIT", "LATE_CREDIT", "AMOUNT_MISMATCH", "DUPLICATE_CREDIT",
               "ORPHAN_CREDIT", "CURRENCY_MISMATCH", "PREPAID_FORFEIT")
INFO_CODES = {"PREPAID_FORFEIT"}

INT = "Int64"
DAY = np.timedelta64(1, "D")


def isin(frame: pd.DataFrame, column: str, other: pd.DataFrame, other_column: str,
         other_rows: np.ndarray | None = None) -> pd.Series:
    """frame[column].isin(other[other_column]) (only `other_rows` of other, if given), on
    integer codes (pandas' own `isin` turns Arrow-backed strings into Python objects one by one)."""
    mine, theirs = keys((frame, column), (other, other_column))
    if other_rows is not None:
        theirs = theirs[other_rows]
    return pd.Series(np.isin(mine, theirs[theirs >= 0]) & (mine >= 0), index=frame.index)


def keyed(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """frame[names], keeping the integer companions of those that have one."""
    return frame[[c for n in names for c in (n, CODE.format(n)) if c in frame.columns]]


ARROW_TYPES = {pa.string(): pd.StringDtype("pyarrow"), pa.int64(): pd.Int64Dtype()}.get
CODE = "{}#code"  # the integer companion of a key column, set by `share_codes`


def _encode(columns: list[pd.Series]) -> list[np.ndarray]:
    """Integer codes of string columns over one dictionary, in one hashing pass (Arrow's
    C++); nulls are -1. Joining, deduplicating and looking up integers is far cheaper
    than doing it on strings in pandas."""
    arrays = [c.array._pa_array if isinstance(c.array, pd.arrays.ArrowExtensionArray)
              else pa.array(c.astype("string[pyarrow]").array) for c in columns]
    chunks = [chunk.cast(pa.string()) for a in arrays
              for chunk in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])]
    # Encoding a chunked array shares one dictionary across its chunks: the indices agree.
    encoded = pa.chunked_array(chunks, pa.string()).dictionary_encode()
    codes = as_codes(pa.chunked_array([c.indices for c in encoded.chunks], pa.int32()))
    out, at = [], 0
    for column in columns:
        out.append(codes[at:at + len(column)])
        at += len(column)
    return out


def as_codes(indices: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Dictionary indices (a null is -1) as one int64 numpy array: the form of every code here."""
    chunks = indices.chunks if isinstance(indices, pa.ChunkedArray) else [indices]
    if not chunks:
        return np.array([], np.int64)
    return np.concatenate([c.fill_null(-1).to_numpy().astype(np.int64) for c in chunks])


def share_codes(*pairs: tuple[pd.DataFrame, str]) -> None:
    """Give key columns of several frames integer companions (`<column>#code`) over one
    dictionary, so every later join, dedupe and lookup on them runs on integers."""
    for (frame, column), codes in zip(pairs, _encode([frame[column] for frame, column in pairs])):
        frame[CODE.format(column)] = codes


def keys(*pairs: tuple[pd.DataFrame, str]) -> list[np.ndarray]:
    """Integer codes of key columns: their shared companions if all have them, else encoded now."""
    names = [CODE.format(column) for _, column in pairs]
    if all(name in frame.columns for (frame, _), name in zip(pairs, names)):
        return [frame[name].to_numpy() for (frame, _), name in zip(pairs, names)]
    return _encode([frame[column] for frame, column in pairs])


def pairs(left: pd.DataFrame, right: pd.DataFrame, left_on: str, right_on: str | None = None, how: str = "inner",
          left_rows: np.ndarray | None = None, right_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The row pairs of left.merge(right) on a string key, as positions (`-1` on the right
    for a left row without a match when `how="left"`), in the left rows' order and, within
    one left row, in the right rows' order (as pandas' merge). `left_rows`/`right_rows`
    restrict either side to those positions. Runs on the shared integer codes of the key:
    a counting sort of the right side, no hashing and no copy of any other column."""
    right_on = right_on or left_on
    lcodes, rcodes = keys((left, left_on), (right, right_on))
    lrows = np.arange(len(left)) if left_rows is None else np.asarray(left_rows, np.int64)
    rrows = np.arange(len(right)) if right_rows is None else np.asarray(right_rows, np.int64)
    lcodes, rcodes = lcodes[lrows], rcodes[rrows]
    valid = rcodes >= 0
    rrows, rcodes = rrows[valid], rcodes[valid]
    size = int(max(lcodes.max(initial=-1), rcodes.max(initial=-1))) + 1
    counts = np.bincount(rcodes, minlength=size)
    if counts.max(initial=0) <= 1:  # the right key is unique (the usual case): one lookup, no sort
        lookup = np.full(size, -1, np.int64)
        lookup[rcodes] = rrows
        ri = np.where(lcodes >= 0, lookup[np.maximum(lcodes, 0)] if size else -1, -1)
        keep = slice(None) if how == "left" else ri >= 0
        return lrows[keep].astype(np.int64), ri[keep].astype(np.int64)
    order = rrows[np.argsort(rcodes, kind="stable")]
    starts = np.cumsum(counts) - counts
    matches = np.where(lcodes >= 0, counts[np.maximum(lcodes, 0)] if size else 0, 0)
    wanted = np.maximum(matches, 1) if how == "left" else matches
    li = np.repeat(lrows, wanted)
    first = np.repeat(np.cumsum(wanted) - wanted, wanted)
    within = np.arange(len(li)) - first
    found = np.repeat(matches > 0, wanted)
    at = np.repeat(starts[np.maximum(lcodes, 0)] if size else np.zeros(len(lcodes), np.int64), wanted) + within
    ri = np.where(found, order[np.where(found, at, 0)] if len(order) else -1, -1)
    return li.astype(np.int64), ri.astype(np.int64)


def combine(left: pd.DataFrame, right: pd.DataFrame, li: np.ndarray, ri: np.ndarray, right_on: str | None = None,
            left_on: str | None = None, suffix: str = "_right") -> pd.DataFrame:
    """The joined rows of `pairs`: left's columns, then right's (a clashing name gets
    `suffix`; the right key is dropped when both keys share a name). Only these rows
    are copied, so a join that is filtered before `combine` copies little."""
    left_part = left.take(li).reset_index(drop=True)
    drop = [right_on, CODE.format(right_on)] if right_on and right_on == left_on else []
    right_cols = right.drop(columns=[c for c in drop if c in right.columns])
    matched = ri >= 0
    if len(right_cols) == 0:  # nothing to take from: every right column is missing
        right_part = right_cols.reset_index(drop=True).reindex(range(len(li)))
    else:
        right_part = right_cols.take(np.where(matched, ri, 0)).reset_index(drop=True)
        if not matched.all():
            right_part = right_part.where(pd.Series(matched), other=pd.NA)
    right_part.columns = [f"{c}{suffix}" if c in left.columns else c for c in right_part.columns]
    return pd.concat([left_part, right_part], axis=1)


def join(left: pd.DataFrame, right: pd.DataFrame, left_on: str, right_on: str | None = None, how: str = "inner",
         suffix: str = "_right") -> pd.DataFrame:
    """left.merge(right) on a string key, joined on shared integer codes of the key."""
    right_on = right_on or left_on
    li, ri = pairs(left, right, left_on, right_on, how)
    return combine(left, right, li, ri, right_on, left_on, suffix)


def rows_where(mask) -> np.ndarray:
    """Positions where a (possibly nullable) boolean mask is true; NA counts as false."""
    if isinstance(mask, pd.Series):
        mask = mask.to_numpy(dtype=bool, na_value=False)
    return np.flatnonzero(mask)


def values(frame: pd.DataFrame, column: str, rows: np.ndarray) -> np.ndarray:
    """A column's values at `rows` as numpy (dates as datetime64, integers as float with
    NaN for a missing value), for comparisons before any row is copied. A row of -1 (no
    match in a left join) gives a missing value: NaN, NaT or None."""
    series = frame[column]
    if isinstance(series.dtype, pd.Int64Dtype):
        array = series.to_numpy(dtype="float64", na_value=np.nan)
    else:
        array = series.to_numpy()
    rows = np.asarray(rows, np.int64)
    missing = rows < 0
    if not missing.any():
        return array[rows]
    kind = array.dtype.kind
    out = (array[np.where(missing, 0, rows)] if len(array)
           else np.empty(len(rows), array.dtype if kind in "fM" else object))
    if kind == "f":
        out[missing] = np.nan
    elif kind == "M":
        out[missing] = np.datetime64("NaT")
    else:
        out = out.astype(object)
        out[missing] = None
    return out


def first_of(frame: pd.DataFrame, key: str, order: list[str] | None = None) -> pd.DataFrame:
    """One row per `key`, the first in `order` (else in the frame order): drop_duplicates on codes."""
    ordered = frame.sort_values(order, kind="mergesort") if order else frame
    (codes,) = keys((ordered, key))
    if len(codes) == 0 or np.bincount(codes + 1).max() <= 1:
        return ordered  # already one row per key: nothing to copy
    _, first = np.unique(codes, return_index=True)
    return ordered.iloc[np.sort(first)]


def _days(later: pd.Series, earlier: pd.Series) -> pd.Series:
    return ((later - earlier) / DAY).astype(INT)


def round_half_up_div(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    """round_half_up(numerator / denominator) for non-negative integers, exactly (no floats)."""
    numerator = numerator.astype("int64")
    denominator = denominator.astype("int64").where(denominator > 0, 1)
    return ((2 * numerator + denominator) // (2 * denominator)).astype(INT)


def _finding(frame: pd.DataFrame, code: str, **columns) -> pd.DataFrame:
    out = pd.DataFrame(index=frame.index)
    out["check_code"] = code
    out["severity"] = "info" if code in INFO_CODES else "error"
    for name, value in columns.items():
        out[name] = value
    return out


def check_overlap(switches: pd.DataFrame, lines: pd.DataFrame) -> pd.DataFrame:
    """The old subscription charged for service on or after the effective date."""
    charges = rows_where(lines["kind"] == "charge")
    li, ri = pairs(lines, switches, "subscription_id", "old_subscription_id", left_rows=charges)
    after = values(lines, "service_end", li) > values(switches, "effective_date", ri)
    over = combine(lines, switches, li[after], ri[after], suffix="_switch")
    start = over[["service_start", "effective_date"]].max(axis=1)
    overlap_days = _days(over["service_end"], start)
    line_days = _days(over["service_end"], over["service_start"])
    actual = round_half_up_div(over["amount_minor"] * overlap_days, line_days)
    return _finding(over, "OVERLAP", tenant_id=over["tenant_id"], upgrade_id=over["upgrade_id"],
                    currency=over["currency"], expected_minor=0, actual_minor=actual, delta_minor=actual,
                    overlap_days=overlap_days, invoice_id=over["invoice_id"], line_id=over["line_id"],
                    effective_date=over["effective_date"],
                    details="old plan charged through " + over["service_end"].dt.strftime("%Y-%m-%d")
                            + " (exclusive), after the switch")


def first_rows(frame: pd.DataFrame, key: str, by: str, rows: np.ndarray) -> np.ndarray:
    """Among `rows`, the position of the first row per `key` in `by` order (ties keep the
    frame order; a missing `by` sorts last), without copying any row."""
    (codes,) = keys((frame, key))
    codes = codes[rows]
    order = np.lexsort((values(frame, by, rows), codes))  # stable: by key, then `by`, then position
    codes = codes[order]
    first = np.ones(len(order), bool)
    first[1:] = codes[1:] != codes[:-1]
    return np.sort(rows[order[first]])


def check_new_billing_gap(switches: pd.DataFrame, lines: pd.DataFrame) -> pd.DataFrame:
    """The new subscription's first charge starts after the effective date."""
    first = first_rows(lines, "subscription_id", "service_start", rows_where(lines["kind"] == "charge"))
    li, ri = pairs(switches, lines, "new_subscription_id", "subscription_id", right_rows=first)
    late = values(lines, "service_start", ri) > values(switches, "effective_date", li)
    gap = combine(switches, lines, li[late], ri[late], suffix="_line")
    gap_days = _days(gap["service_start"], gap["effective_date"])
    line_days = _days(gap["service_end"], gap["service_start"])
    unbilled = round_half_up_div(gap["amount_minor"] * gap_days, line_days)
    return _finding(gap, "NEW_BILLING_GAP", tenant_id=gap["tenant_id"], upgrade_id=gap["upgrade_id"],
                    currency=gap["currency"], expected_minor=unbilled, actual_minor=0, delta_minor=-unbilled,
                    overlap_days=-gap_days, invoice_id=gap["invoice_id"], line_id=gap["line_id"],
                    effective_date=gap["effective_date"],
                    details="new plan first billed from " + gap["service_start"].dt.strftime("%Y-%m-%d"))


def expected_credit(credits: pd.DataFrame, requests: pd.DataFrame, switches: pd.DataFrame) -> pd.DataFrame:
    """The credit each upgrade should have had, recomputed from its request and switch."""
    base = join(keyed(switches, ["upgrade_id", "effective_date", "new_total_cost_minor"]),
                keyed(requests, ["upgrade_id", "period_start", "period_end", "billed_minor", "prepaid_term_start",
                                   "prepaid_term_end", "prepaid_paid_minor"]), "upgrade_id")
    prepaid = base["prepaid_term_start"].notna()
    start = base["prepaid_term_start"].where(prepaid, base["period_start"])
    end = base["prepaid_term_end"].where(prepaid, base["period_end"])
    paid = base["prepaid_paid_minor"].where(prepaid, base["billed_minor"]).astype("int64")
    whole = _days(end, start).clip(lower=0)
    part = _days(end, base["effective_date"]).clip(lower=0)
    part = part.where(part <= whole, whole)
    remaining = round_half_up_div(paid * part, whole)
    cost = base["new_total_cost_minor"].astype("int64")
    credit = remaining.where(~prepaid, np.minimum(remaining, cost)).astype(INT)
    out = keyed(base, ["upgrade_id"]).copy()
    out["expected_credit"] = credit
    return out


def repeated(frame: pd.DataFrame, key: str) -> pd.Series:
    """Rows whose key occurs more than once in the frame (nulls never count)."""
    (codes,) = keys((frame, key))
    valid = codes >= 0
    counts = np.bincount(codes[valid], minlength=1) if valid.any() else np.zeros(1, np.int64)
    return pd.Series(valid & (counts[np.where(valid, codes, 0)] > 1), index=frame.index)


def differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a != b where both are known (a missing value compares as pandas' NA: never a finding)."""
    return (a != b) & ~np.isnan(a) & ~np.isnan(b)


def check_credits(credits: pd.DataFrame, lines: pd.DataFrame, recomputed: pd.DataFrame,
                  run_date: date) -> pd.DataFrame:
    """MISSING, LATE, AMOUNT_MISMATCH, CURRENCY_MISMATCH and DUPLICATE_CREDIT, per issued credit.

    Each issued credit is paired with its invoice lines on positions; the conditions are
    evaluated on those positions, and only the rows that are findings are copied."""
    run = pd.Timestamp(run_date)
    li, ri = pairs(credits, lines, "credit_id", how="left", right_rows=rows_where(lines["kind"] == "credit"))
    has_line = ri >= 0
    due_by = values(credits, "due_by", li)
    invoiced_amount = -values(lines, "amount_minor", ri)
    credit_currency = _arrow(credits["currency"]).take(li)
    line_currency = _arrow(lines["currency"]).take(pa.array(ri, mask=~has_line))  # no line: null
    other_currency = pc.not_equal(credit_currency, line_currency).to_numpy(zero_copy_only=False)
    (credit_codes,) = keys((lines, "credit_id"))
    invoiced_as = np.full(len(ri), -1, np.int64)  # the credit_id code of each pair's line
    invoiced_as[has_line] = credit_codes[ri[has_line]]
    times_invoiced = np.bincount(invoiced_as[has_line], minlength=1)
    several = has_line & (times_invoiced[np.maximum(invoiced_as, 0)] > 1)
    conditions = {
        "missing": ~has_line & (due_by < run.to_datetime64()),
        "late": has_line & (values(lines, "issued_on", ri) > due_by),
        "wrong": has_line & differ(invoiced_amount, values(credits, "amount_minor", li)),
        "currency": has_line & np.asarray(other_currency == True),  # noqa: E712 (a missing currency: no finding)
        "several": several,
    }
    rows = {name: combine(credits, lines, li[mask], ri[mask], "credit_id", "credit_id", suffix="_invoice")
            for name, mask in conditions.items()}
    for frame in rows.values():
        frame["effective_date"] = frame["due_by"] - 30 * DAY
    missing, late, wrong, currency, several = (rows[n] for n in conditions)
    ids = ["tenant_id", "upgrade_id", "credit_id", "effective_date", "due_by"]
    on_line = ids + ["invoice_id", "line_id"]

    def finding(rows: pd.DataFrame, code: str, columns: list[str], **values) -> pd.DataFrame:
        return _finding(rows, code, currency=rows["currency"], **{c: rows[c] for c in columns}, **values)

    extra = several[several.sort_values(["credit_id", "issued_on", "line_id"]).duplicated("credit_id")
                    .reindex(several.index)]
    times = several.groupby("credit_id")["line_id"].size()
    twice_issued = credits[repeated(credits, "upgrade_id")]
    twice_issued = twice_issued[twice_issued.duplicated("upgrade_id")]
    ci, ei = pairs(credits, recomputed, "upgrade_id")
    differs = differ(values(credits, "amount_minor", ci), values(recomputed, "expected_credit", ei))
    off = combine(credits, recomputed, ci[differs], ei[differs], "upgrade_id", "upgrade_id")

    return pd.concat([
        finding(missing, "MISSING_CREDIT", ids, expected_minor=missing["amount_minor"], actual_minor=0,
                delta_minor=-missing["amount_minor"], days_late=_days(pd.Series(run, index=missing.index),
                                                                      missing["due_by"]),
                details="credit past its due date on no invoice"),
        finding(late, "LATE_CREDIT", on_line, expected_minor=late["amount_minor"],
                actual_minor=-late["amount_minor_invoice"], delta_minor=0,
                days_late=_days(late["issued_on"], late["due_by"]),
                details="credit invoiced " + late["issued_on"].dt.strftime("%Y-%m-%d")),
        finding(wrong, "AMOUNT_MISMATCH", on_line, expected_minor=wrong["amount_minor"],
                actual_minor=-wrong["amount_minor_invoice"],
                delta_minor=-wrong["amount_minor_invoice"] - wrong["amount_minor"],
                details="invoiced credit differs from the issued credit"),
        finding(currency, "CURRENCY_MISMATCH", on_line, expected_minor=currency["amount_minor"],
                actual_minor=-currency["amount_minor_invoice"], delta_minor=0,
                details="invoiced in " + currency["currency_invoice"]),
        finding(extra, "DUPLICATE_CREDIT", on_line, expected_minor=0, actual_minor=-extra["amount_minor_invoice"],
                delta_minor=-extra["amount_minor_invoice"],
                details="credit invoiced " + extra["credit_id"].map(times).astype(str) + " times"),
        finding(twice_issued, "DUPLICATE_CREDIT", ["tenant_id", "upgrade_id", "credit_id", "due_by"],
                expected_minor=0, actual_minor=twice_issued["amount_minor"], delta_minor=twice_issued["amount_minor"],
                details="more than one credit issued for the upgrade"),
        finding(off, "AMOUNT_MISMATCH", ["tenant_id", "upgrade_id", "credit_id", "due_by"],
                expected_minor=off["expected_credit"], actual_minor=off["amount_minor"],
                delta_minor=off["amount_minor"] - off["expected_credit"],
                details="issued credit differs from the credit recomputed from the request"),
    ], ignore_index=True)


def check_orphans(credits: pd.DataFrame, lines: pd.DataFrame) -> pd.DataFrame:
    credit_lines = rows_where(lines["kind"] == "credit")
    issued = isin(lines, "credit_id", credits, "credit_id").to_numpy()  # a missing credit_id is never issued
    orphans = lines.take(credit_lines[~issued[credit_lines]])
    return _finding(orphans, "ORPHAN_CREDIT", tenant_id=orphans["tenant_id"], currency=orphans["currency"],
                    expected_minor=0, actual_minor=-orphans["amount_minor"], delta_minor=-orphans["amount_minor"],
                    credit_id=orphans["credit_id"], invoice_id=orphans["invoice_id"], line_id=orphans["line_id"],
                    details="credit line for a credit planshift never issued")


def check_forfeits(completed: pd.DataFrame) -> pd.DataFrame:
    forfeit = completed[completed["forfeit_minor"].fillna(0) > 0]
    return _finding(forfeit, "PREPAID_FORFEIT", tenant_id=forfeit["tenant_id"], upgrade_id=forfeit["upgrade_id"],
                    currency=forfeit["currency"], expected_minor=0, actual_minor=forfeit["forfeit_minor"],
                    delta_minor=forfeit["forfeit_minor"], details="prepaid time forfeited at upgrade")


def findings_table(switches, credits, requests, completed, lines, run_date: date) -> pd.DataFrame:
    parts = [
        check_overlap(switches, lines),
        check_new_billing_gap(switches, lines),
        check_credits(credits, lines, expected_credit(credits, requests, switches), run_date),
        check_orphans(credits, lines),
        check_forfeits(completed),
    ]
    table = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) \
        else pd.DataFrame(columns=FINDING_COLUMNS)
    table = table.reindex(columns=FINDING_COLUMNS)
    table["run_date"] = pd.Timestamp(run_date)
    for column in ("expected_minor", "actual_minor", "delta_minor", "overlap_days", "days_late"):
        table[column] = table[column].astype(INT)
    for column in ("effective_date", "due_by"):
        table[column] = pd.to_datetime(table[column])
    for column in ("tenant_id", "upgrade_id", "check_code", "severity", "currency", "credit_id", "invoice_id",
                   "line_id", "details"):
        table[column] = table[column].astype("string")
    return sort_rows(table, ["check_code", "tenant_id", "upgrade_id", "credit_id", "invoice_id", "line_id"],
                     nulls_first=True)


def upgrades_table(completed: pd.DataFrame, switches: pd.DataFrame, credits: pd.DataFrame, lines: pd.DataFrame,
                   findings: pd.DataFrame, run_date: date) -> pd.DataFrame:
    """One row per completed upgrade: MATCHED, OPEN (an error finding) or PENDING (credit not yet invoiced)."""
    table = join(first_of(keyed(completed, ["tenant_id", "upgrade_id", "currency", "credit_minor", "forfeit_minor"]),
                          "upgrade_id"),
                 first_of(keyed(switches, ["upgrade_id", "effective_date"]), "upgrade_id"), "upgrade_id", how="left")
    errors = findings.loc[(findings["severity"] == "error").to_numpy(dtype=bool, na_value=False)]
    errors = errors.groupby("upgrade_id").size()  # upgrades with an error finding: few, so look them up
    at = pc.index_in(_arrow(table["upgrade_id"]), value_set=pa.array(errors.index.array, pa.string()))
    at = at.fill_null(-1).to_numpy(zero_copy_only=False)
    counts = errors.to_numpy(dtype="int64")
    table["findings"] = np.where(at >= 0, counts[np.maximum(at, 0)] if len(counts) else 0, 0).astype("int64")
    invoiced_credits = credits.take(rows_where(
        isin(credits, "credit_id", lines, "credit_id", rows_where(lines["kind"] == "credit"))))
    needs_credit = table["credit_minor"].fillna(0) > 0
    credited = isin(table, "upgrade_id", invoiced_credits, "upgrade_id")
    table["status"] = np.where(table["findings"] > 0, "OPEN",
                               np.where(~needs_credit | credited, "MATCHED", "PENDING"))
    table.insert(0, "run_date", pd.Timestamp(run_date))
    table = table.reindex(columns=UPGRADE_COLUMNS)
    for column in ("tenant_id", "upgrade_id", "currency", "status"):
        table[column] = table[column].astype("string")
    for column in ("credit_minor", "forfeit_minor"):
        table[column] = table[column].astype(INT)
    return sort_rows(table, ["tenant_id", "upgrade_id"])


def _arrow(column: pd.Series) -> pa.ChunkedArray | pa.Array:
    array = column.array
    return array._pa_array if isinstance(array, pd.arrays.ArrowExtensionArray) else pa.array(array)


def sort_rows(frame: pd.DataFrame, by: list[str], nulls_first: bool = False) -> pd.DataFrame:
    """frame.sort_values(by, kind="mergesort"), as one stable Arrow sort of the key columns
    (pandas factorizes each Arrow-backed string key separately)."""
    keys_table = pa.table({name: _arrow(frame[name]) for name in by})
    nulls = "at_start" if nulls_first else "at_end"
    order = pc.sort_indices(keys_table, sort_keys=[(name, "ascending", nulls) for name in by])
    return frame.take(order.to_numpy()).reset_index(drop=True)


def summary_table(findings: pd.DataFrame, run_date: date) -> pd.DataFrame:
    grouped = findings.groupby(["check_code", "currency"], dropna=False, sort=True).agg(
        count=("check_code", "size"), delta_minor=("delta_minor", "sum")).reset_index()
    grouped.insert(0, "run_date", pd.Timestamp(run_date))
    grouped["count"] = grouped["count"].astype("int64")
    grouped["delta_minor"] = grouped["delta_minor"].astype(INT)
    for column in ("check_code", "currency"):
        grouped[column] = grouped[column].astype("string")
    return grouped.reindex(columns=SUMMARY_COLUMNS)
