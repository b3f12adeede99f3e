"""`planshift reconcile` at scale, beside the same checks as DuckDB SQL over the same Parquet.

Generates a lake (the archiver's layout, manifests included) of `--upgrades` (1,000,000)
completed upgrades — requests, switches, credits, completed statuses — and invoices
holding `--lines` (10,000,000) invoice lines: each upgrade's switch invoice (old plan up to
the switch, new plan from it, and charges of the tenant's other subscriptions) and its
credit invoice; about 1% of upgrades carry each billing fault. Then, in one run:

  * `planshift reconcile --date D` as a child process: wall time and peak memory (RSS);
  * the same checks written as DuckDB SQL over the same files (DuckDB in this benchmark
    only): wall time, and whether its finding counts per check agree.

Goals (issue 5): within 60 s, under 4 GiB peak, and no more than 2× DuckDB's time.

    python bench/reconcile_scale.py [--upgrades 1000000] [--lines 10000000] [--keep DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from planshift.contract import Topic  # noqa: E402
from planshift.lake import LINE, SCHEMAS  # noqa: E402

EFFECTIVE = np.datetime64("2026-11-17")
RUN_DATE = "2027-01-31"
FAULT_SHARE = 0.01


def _dates(values) -> pa.Array:
    return pa.array(np.datetime_as_string(values, unit="D"), pa.string())


def _write(root: Path, topic: str, table: pa.Table, chunk: int, day: str = "2026-11-17") -> None:
    """Files of `chunk` rows under topic=/event_date=, each named by a manifest (as the archiver does)."""
    files = []
    n = table.num_rows
    for i, start in enumerate(range(0, n, chunk)):
        part = table.slice(start, chunk)
        relative = f"topic={topic}/event_date={day}/part-p000-o{start:012d}-{start + part.num_rows - 1:012d}.parquet"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, root / relative)
        files.append(relative)
    manifest = root / "_manifests" / f"topic={topic}" / "partition=0" / f"{0:012d}-{n - 1:012d}.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"partition": 0, "first": 0, "last": n - 1, "files": files}))


def _table(topic: str, columns: dict) -> pa.Table:
    schema = SCHEMAS[topic]
    n = len(next(iter(columns.values())))
    arrays = []
    for field in schema:
        if field.name in columns:
            arrays.append(pa.array(columns[field.name], field.type))
        else:
            arrays.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def generate(root: Path, upgrades: int, lines_total: int, seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    n = upgrades
    ids = np.char.add("ord-", np.arange(n).astype(str))
    tenants = np.char.add("t", (np.arange(n) // 2).astype(str))
    old_sub = np.char.add(ids, "-old")
    new_sub = np.char.add(ids, "-new")
    currency = np.array(["EUR", "USD", "GBP", "JPY"])[rng.integers(0, 4, n)]
    billed = rng.integers(10_000, 2_000_000, n)
    cost = billed * 2
    period_end, days = np.datetime64("2026-12-01"), 30
    unused = (period_end - EFFECTIVE).astype(int)
    credit = (2 * billed * unused + days) // (2 * days)
    faults = {name: rng.random(n) < FAULT_SHARE for name in
              ("overlap", "gap", "missing", "late", "wrong", "duplicate", "orphan", "currency")}

    zeros = np.zeros(n, dtype=np.int64)
    _write(root, Topic.UPGRADE_REQUESTED, _table(Topic.UPGRADE_REQUESTED, {
        "partition": zeros.astype(np.int32), "offset": np.arange(n), "event_id": ids, "tenant_id": tenants,
        "upgrade_id": ids, "source_subscription_id": old_sub, "target_subscription_id": new_sub,
        "currency": currency, "new_total_cost_minor": cost, "period_start": np.full(n, "2026-11-01"),
        "period_end": np.full(n, "2026-12-01"), "billed_minor": billed}), 250_000)
    _write(root, Topic.BILLING_SWITCH, _table(Topic.BILLING_SWITCH, {
        "partition": zeros.astype(np.int32), "offset": np.arange(n), "event_id": ids, "tenant_id": tenants,
        "upgrade_id": ids, "old_subscription_id": old_sub, "new_subscription_id": new_sub,
        "effective_date": np.full(n, "2026-11-17"), "currency": currency, "new_total_cost_minor": cost,
        "billing_frequency": np.full(n, "monthly")}), 250_000)
    credit_ids = np.char.add(ids, ":credit")
    _write(root, Topic.CREDIT_ISSUED, _table(Topic.CREDIT_ISSUED, {
        "partition": zeros.astype(np.int32), "offset": np.arange(n), "event_id": credit_ids, "tenant_id": tenants,
        "credit_id": credit_ids, "upgrade_id": ids, "subscription_id": old_sub, "currency": currency,
        "amount_minor": credit, "forfeit_minor": zeros, "due_by": np.full(n, "2026-12-17"),
        "basis": np.full(n, "UNUSED_TIME")}), 250_000)
    _write(root, Topic.UPGRADE_STATUS, _table(Topic.UPGRADE_STATUS, {
        "partition": zeros.astype(np.int32), "offset": np.arange(n), "event_id": ids, "tenant_id": tenants,
        "upgrade_id": ids, "status": np.full(n, "completed"), "credit_minor": credit, "forfeit_minor": zeros,
        "currency": currency}), 250_000)

    # Invoices: a switch invoice per upgrade with (old, new, k other) charges, and a credit invoice.
    base_lines = 3  # old charge, new charge, credit (orphan and duplicate lines are extra)
    other = max(0, (lines_total - base_lines * n) // n)
    invoice_rows = []
    line_count = 0
    chunk = 100_000
    offset = 0
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        m = sl.stop - sl.start
        ov, gp = faults["overlap"][sl], faults["gap"][sl]
        old_end = np.where(ov, "2026-11-22", "2026-11-17")
        new_start = np.where(gp, "2026-11-20", "2026-11-17")
        switch_lines = []
        for j in range(m):
            i = sl.start + j
            row = [
                {"line_id": f"{ids[i]}-s1", "subscription_id": old_sub[i], "kind": "charge", "amount_minor": 3000,
                 "service_start": "2026-11-01", "service_end": old_end[j], "credit_id": None},
                {"line_id": f"{ids[i]}-s2", "subscription_id": new_sub[i], "kind": "charge",
                 "amount_minor": int(cost[i]), "service_start": new_start[j], "service_end": "2026-12-17",
                 "credit_id": None},
            ]
            row += [{"line_id": f"{ids[i]}-o{k}", "subscription_id": f"{tenants[i]}-other-{k}", "kind": "charge",
                     "amount_minor": 1000 + k, "service_start": "2026-11-01", "service_end": "2026-12-01",
                     "credit_id": None} for k in range(other)]
            switch_lines.append(row)
        cr_lines, cr_currency, cr_issued, cr_ids, cr_tenants = [], [], [], [], []
        for j in range(m):
            i = sl.start + j
            if faults["missing"][i]:
                continue
            amount = int(credit[i]) - (100 if faults["wrong"][i] else 0)
            line = {"line_id": f"{ids[i]}-c1", "subscription_id": old_sub[i], "kind": "credit",
                    "amount_minor": -amount, "service_start": "2026-11-17", "service_end": "2026-12-01",
                    "credit_id": credit_ids[i]}
            lines = [line]
            if faults["orphan"][i]:
                lines.append({**line, "line_id": f"{ids[i]}-c2", "credit_id": f"{ids[i]}:credit-elsewhere",
                              "amount_minor": -500})
            if faults["duplicate"][i]:
                lines.append({**line, "line_id": f"{ids[i]}-c3"})
            cr_lines.append(lines)
            cr_currency.append("CHF" if faults["currency"][i] else currency[i])
            cr_issued.append("2026-12-24" if faults["late"][i] else "2026-11-27")
            cr_ids.append(f"inv-{ids[i]}-credit")
            cr_tenants.append(tenants[i])
        invoices = pa.table({
            "invoice_id": pa.array(list(np.char.add(np.char.add("inv-", ids[sl]), "-switch")) + cr_ids),
            "tenant_id": pa.array(list(tenants[sl]) + cr_tenants),
            "issued_on": pa.array(["2026-11-17"] * m + cr_issued),
            "currency": pa.array(list(currency[sl]) + cr_currency),
            "lines": pa.array(switch_lines + cr_lines, pa.list_(LINE)),
        })
        rows = invoices.num_rows
        line_count += sum(len(x) for x in switch_lines) + sum(len(x) for x in cr_lines)
        full = _table(Topic.INVOICE_ISSUED, {"partition": np.zeros(rows, np.int32), "offset": np.arange(offset, offset + rows),
                                             "event_id": invoices["invoice_id"].to_numpy(zero_copy_only=False),
                                             "tenant_id": invoices["tenant_id"].to_numpy(zero_copy_only=False),
                                             "invoice_id": invoices["invoice_id"].to_numpy(zero_copy_only=False),
                                             "issued_on": invoices["issued_on"].to_numpy(zero_copy_only=False),
                                             "currency": invoices["currency"].to_numpy(zero_copy_only=False)})
        full = full.set_column(full.schema.get_field_index("lines"), "lines", invoices["lines"])
        invoice_rows.append(full)
        offset += rows
        print(f"\r  invoices: {offset:,} ({line_count:,} lines)", end="", flush=True)
    print()
    _write(root, Topic.INVOICE_ISSUED, pa.concat_tables(invoice_rows), 200_000)
    return {"lines": line_count, "faults": {k: int(v.sum()) for k, v in faults.items()}}


DUCKDB_SQL = """
CREATE TEMP VIEW switches AS SELECT upgrade_id, tenant_id, old_subscription_id, new_subscription_id,
    CAST(effective_date AS DATE) AS effective_date, currency FROM read_parquet('{lake}/topic=billing.switch/*/*.parquet');
CREATE TEMP VIEW credits AS SELECT credit_id, upgrade_id, tenant_id, currency, amount_minor, forfeit_minor,
    CAST(due_by AS DATE) AS due_by FROM read_parquet('{lake}/topic=credit.issued/*/*.parquet');
CREATE TEMP VIEW requests AS SELECT upgrade_id, CAST(period_start AS DATE) ps, CAST(period_end AS DATE) pe, billed_minor
    FROM read_parquet('{lake}/topic=upgrade.requested/*/*.parquet');
CREATE TEMP TABLE lines AS SELECT i.invoice_id, i.tenant_id, CAST(i.issued_on AS DATE) issued_on, i.currency,
    l.line_id, l.subscription_id, l.kind, l.amount_minor, CAST(l.service_start AS DATE) service_start,
    CAST(l.service_end AS DATE) service_end, l.credit_id
    FROM read_parquet('{lake}/topic=invoice.issued/*/*.parquet') i, UNNEST(i.lines) AS t(l);
CREATE TEMP TABLE findings AS
SELECT 'OVERLAP' code, s.upgrade_id, s.currency, l.amount_minor * (l.service_end - greatest(l.service_start, s.effective_date)) // (l.service_end - l.service_start) delta
  FROM lines l JOIN switches s ON l.subscription_id = s.old_subscription_id
  WHERE l.kind = 'charge' AND l.service_end > s.effective_date
UNION ALL
SELECT 'NEW_BILLING_GAP', s.upgrade_id, s.currency, 0 FROM switches s JOIN (
    SELECT subscription_id, min(service_start) first FROM lines WHERE kind = 'charge' GROUP BY 1) f
  ON f.subscription_id = s.new_subscription_id WHERE f.first > s.effective_date
UNION ALL
SELECT 'MISSING_CREDIT', c.upgrade_id, c.currency, -c.amount_minor FROM credits c
  WHERE c.due_by < DATE '{run}' AND NOT EXISTS (SELECT 1 FROM lines l WHERE l.kind = 'credit' AND l.credit_id = c.credit_id)
UNION ALL
SELECT 'LATE_CREDIT', c.upgrade_id, c.currency, 0 FROM credits c JOIN lines l ON l.credit_id = c.credit_id
  WHERE l.kind = 'credit' AND l.issued_on > c.due_by
UNION ALL
SELECT 'AMOUNT_MISMATCH', c.upgrade_id, c.currency, -l.amount_minor - c.amount_minor FROM credits c
  JOIN lines l ON l.credit_id = c.credit_id WHERE l.kind = 'credit' AND -l.amount_minor <> c.amount_minor
UNION ALL
SELECT 'AMOUNT_MISMATCH', c.upgrade_id, c.currency, c.amount_minor - r.expected FROM credits c JOIN (
    SELECT s.upgrade_id, (2 * q.billed_minor * greatest(0, least(q.pe - s.effective_date, q.pe - q.ps)) + (q.pe - q.ps))
           // (2 * (q.pe - q.ps)) expected FROM switches s JOIN requests q USING (upgrade_id)) r USING (upgrade_id)
  WHERE c.amount_minor <> r.expected
UNION ALL
SELECT 'CURRENCY_MISMATCH', c.upgrade_id, c.currency, 0 FROM credits c JOIN lines l ON l.credit_id = c.credit_id
  WHERE l.kind = 'credit' AND l.currency <> c.currency
UNION ALL
SELECT 'DUPLICATE_CREDIT', upgrade_id, currency, -amount_minor FROM (
    SELECT c.upgrade_id, c.currency, l.amount_minor,
           row_number() OVER (PARTITION BY l.credit_id ORDER BY l.issued_on, l.line_id) n
    FROM credits c JOIN lines l ON l.credit_id = c.credit_id WHERE l.kind = 'credit') WHERE n > 1
UNION ALL
SELECT 'ORPHAN_CREDIT', NULL, l.currency, -l.amount_minor FROM lines l
  WHERE l.kind = 'credit' AND (l.credit_id IS NULL OR l.credit_id NOT IN (SELECT credit_id FROM credits))
UNION ALL
SELECT 'PREPAID_FORFEIT', upgrade_id, currency, forfeit_minor FROM credits WHERE forfeit_minor > 0;
COPY (SELECT * FROM findings ORDER BY code, upgrade_id) TO '{out}/findings.parquet' (FORMAT PARQUET);
COPY (SELECT code, currency, count(*) n, sum(delta) delta FROM findings GROUP BY ALL ORDER BY ALL)
  TO '{out}/summary.parquet' (FORMAT PARQUET);
"""


def run_duckdb(lake: Path, out: Path) -> tuple[float, dict]:
    import duckdb

    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(DUCKDB_SQL.format(lake=lake, run=RUN_DATE, out=out))
    counts = dict(con.execute("SELECT code, count(*) FROM findings GROUP BY 1").fetchall())
    elapsed = time.perf_counter() - began
    con.close()
    return elapsed, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upgrades", type=int, default=1_000_000)
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this folder")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each, alternated; medians are compared")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="planshift-reconcile-bench-"))
    lake = work / "lake"
    try:
        if not (lake / "_manifests").exists():
            began = time.perf_counter()
            print(f"generating {args.upgrades:,} upgrades and ~{args.lines:,} invoice lines in {work} …")
            info = generate(lake, args.upgrades, args.lines)
            print(f"generated {info['lines']:,} lines in {time.perf_counter() - began:.0f}s; faults {info['faults']}")
        env = {**os.environ, "PLANSHIFT_DATA_DIR": str(work)}
        ours_s, duck_s = [], []
        for round_no in range(1, args.rounds + 1):  # alternated, so both see the same machine
            began = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "planshift", "reconcile", "--date", RUN_DATE], env=env,
                                  capture_output=True, text=True)
            ours_s.append(time.perf_counter() - began)
            if proc.returncode != 0:
                print(proc.stdout, proc.stderr)
                raise SystemExit("planshift reconcile failed")
            duck, duck_counts = run_duckdb(lake, work / "duckdb")
            duck_s.append(duck)
            print(f"round {round_no}: planshift {ours_s[-1]:.2f}s, DuckDB {duck:.2f}s, ratio {ours_s[-1] / duck:.2f}")
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest of the runs
        print(proc.stdout.strip())
        ours = pq.read_table(work / "reports" / "reconciliation" / "summary").to_pandas()
        our_counts = ours.groupby("check_code")["count"].sum().to_dict()
        peak_gib = peak_kib / 1024 / 1024
        elapsed, duck = statistics.median(ours_s), statistics.median(duck_s)
        print(f"\nmedians of {args.rounds} rounds")
        print(f"planshift reconcile : {elapsed:6.1f}s wall, peak RSS {peak_gib:.2f} GiB "
              f"(goals: ≤ 60 s {'met' if elapsed <= 60 else 'NOT met'}, < 4 GiB {'met' if peak_gib < 4 else 'NOT met'})")
        print(f"DuckDB, same checks : {duck:6.1f}s wall")
        ratio = elapsed / duck
        print(f"ratio planshift/DuckDB: {ratio:.2f}  (goal ≤ 2: {'met' if ratio <= 2 else 'NOT met'})")
        agree = {k: (our_counts.get(k, 0), duck_counts.get(k, 0)) for k in sorted(set(our_counts) | set(duck_counts))}
        print("findings per check (planshift, DuckDB):", agree)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
