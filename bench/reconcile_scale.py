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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from planshift.contract import Topic  # noqa: E402
from planshift.storage.lake import LINE, SCHEMAS  # noqa: E402

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
            value = columns[field.name]
            arrays.append(value.cast(field.type) if isinstance(value, (pa.Array, pa.ChunkedArray))
                          else pa.array(value, field.type))
        else:
            arrays.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _join(*parts) -> pa.Array:
    """Element-wise string concatenation of arrays and scalars (Arrow's C++, fast at 30M)."""
    arrays = [p if isinstance(p, (pa.Array, pa.ChunkedArray)) else pa.scalar(str(p)) for p in parts]
    return pc.binary_join_element_wise(*arrays, "")


def _invoices(invoice_id, tenant, issued, currency, lines: dict, counts: np.ndarray) -> pa.Table:
    """Invoice rows whose lines are `lines` (flat columns, grouped by invoice in order) with `counts` per invoice."""
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    def column(value, type_):
        value = value.cast(type_) if isinstance(value, (pa.Array, pa.ChunkedArray)) else pa.array(value, type_)
        return value.combine_chunks() if isinstance(value, pa.ChunkedArray) else value

    struct = pa.StructArray.from_arrays([column(lines[f.name], f.type) for f in LINE], fields=list(LINE))
    return pa.table({"invoice_id": invoice_id, "tenant_id": tenant, "issued_on": issued, "currency": currency,
                     "lines": pa.ListArray.from_arrays(offsets, struct)})


def generate(root: Path, upgrades: int, lines_total: int, seed: int = 7) -> dict:
    """A lake billed in advance (CONTRACT.md §6 r2), built column-wise.

    Per upgrade: the old plan's November billed on 11-01 (its current period); on the switch
    (11-17) the new plan billed from 11-17 for a month, on one invoice with the tenant's other
    subscriptions' charges (the bulk of the lines, which the reconciliation filters out); the
    credit for 14 unused days on the next invoice (11-27). About 1% of upgrades carry each
    fault, and 1% each of the harmless patterns (a re-delivered invoice, a split credit)."""
    rng = np.random.default_rng(seed)
    n = upgrades
    ids = _join("ord-", pa.array(np.arange(n).astype(str)))
    tenants = _join("t", pa.array((np.arange(n) // 2).astype(str)))
    old_sub, new_sub = _join(ids, "-old"), _join(ids, "-new")
    currency = pa.array(np.array(["EUR", "USD", "GBP", "JPY"])[rng.integers(0, 4, n)])
    billed = rng.integers(10_000, 2_000_000, n)
    cost = billed * 2
    days, unused = 30, 14
    credit = (2 * billed * unused + days) // (2 * days)
    names = ("overlap", "gap", "early", "missing", "late", "wrong", "duplicate", "orphan", "currency",
             "redelivered", "split")
    faults = {name: rng.random(n) < FAULT_SHARE for name in names}
    faults["early"] &= ~faults["gap"]

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
    credit_ids = _join(ids, ":credit")
    _write(root, Topic.CREDIT_ISSUED, _table(Topic.CREDIT_ISSUED, {
        "partition": zeros.astype(np.int32), "offset": np.arange(n), "event_id": credit_ids, "tenant_id": tenants,
        "credit_id": credit_ids, "upgrade_id": ids, "subscription_id": old_sub, "currency": currency,
        "amount_minor": credit, "forfeit_minor": zeros, "due_by": np.full(n, "2026-12-17"),
        "basis": np.full(n, "UNUSED_TIME"), "unused_days": np.full(n, unused), "period_days": np.full(n, days),
        "period_start": np.full(n, "2026-11-01"), "period_end": np.full(n, "2026-12-01")}), 250_000)
    _write(root, Topic.UPGRADE_STATUS, _table(Topic.UPGRADE_STATUS, {
        "partition": zeros.astype(np.int32), "offset": np.arange(n), "event_id": ids, "tenant_id": tenants,
        "upgrade_id": ids, "status": np.full(n, "completed"), "credit_minor": credit, "forfeit_minor": zeros,
        "currency": currency}), 250_000)

    def lines(line_id, subscription, kind, amount, start, end, credit_id=None):
        size = len(line_id)
        return {"line_id": line_id, "subscription_id": subscription, "kind": np.full(size, kind),
                "amount_minor": amount, "service_start": np.broadcast_to(start, size).astype(str) if isinstance(
                    start, str) else start, "service_end": np.broadcast_to(end, size).astype(str) if isinstance(
                    end, str) else end, "credit_id": credit_id if credit_id is not None else pa.nulls(size, pa.string())}

    tables = []
    # 1. the old plan's current period, billed in advance on 11-01
    tables.append(_invoices(_join("inv-", old_sub, "-2026-11-01"), tenants, pa.array(np.full(n, "2026-11-01")),
                            currency, lines(_join(old_sub, "-p1"), old_sub, "charge", billed, "2026-11-01",
                                            "2026-12-01"), np.ones(n, np.int64)))
    # 2. the switch invoice: the new plan from 11-17 (a gap: from 11-20; early: from 11-10), and the
    #    tenant's other subscriptions, `other` lines each
    other = max(0, (lines_total - 3 * n) // n)
    new_start = np.where(faults["gap"], "2026-11-20", np.where(faults["early"], "2026-11-10", "2026-11-17"))
    k = np.arange(other)
    per = 1 + other
    switch_lines = {
        "line_id": _join(pa.array(np.repeat(np.asarray(ids), per)), "-s",
                         pa.array(np.tile(np.arange(per), n).astype(str))),
        "subscription_id": pa.array(np.where(np.tile(np.arange(per), n) == 0, np.repeat(np.asarray(new_sub), per),
                                             np.char.add(np.repeat(np.asarray(tenants).astype(str), per), "-other"))),
        "kind": np.full(n * per, "charge"),
        "amount_minor": np.where(np.tile(np.arange(per), n) == 0, np.repeat(cost, per),
                                 1000 + np.tile(np.concatenate([[0], k]), n)),
        "service_start": np.where(np.tile(np.arange(per), n) == 0, np.repeat(new_start, per), "2026-11-01"),
        "service_end": np.where(np.tile(np.arange(per), n) == 0, "2026-12-17", "2026-12-01"),
        "credit_id": pa.nulls(n * per, pa.string()),
    }
    tables.append(_invoices(_join("inv-", ids, "-switch"), tenants, pa.array(np.full(n, "2026-11-17")), currency,
                            switch_lines, np.full(n, per, np.int64)))
    # 3. the credit on the next invoice (missing: none; late: after its due date; wrong: 100 short;
    #    a wrong currency: CHF; split: two lines that add up; orphan: one more line for a credit nobody issued)
    has = ~faults["missing"]
    c = np.flatnonzero(has)
    amount = credit[c] - np.where(faults["wrong"][c], 100, 0)
    split = faults["split"][c]
    orphan = faults["orphan"][c]
    counts = 1 + split + orphan
    which = np.repeat(np.arange(len(c)), counts)
    nth = np.arange(len(which)) - np.repeat(np.cumsum(counts) - counts, counts)
    is_orphan = orphan[which] & (nth == counts[which] - 1)
    is_split_second = split[which] & (nth == 1) & ~is_orphan
    first_part = np.where(split, amount // 3, amount)
    line_amount = np.where(is_orphan, 500, np.where(is_split_second, (amount - first_part)[which],
                                                    first_part[which]))
    cid = np.asarray(credit_ids)[c][which]
    credit_lines = {
        "line_id": _join(pa.array(np.asarray(ids)[c][which]), "-c", pa.array(nth.astype(str))),
        "subscription_id": pa.array(np.asarray(old_sub)[c][which]), "kind": np.full(len(which), "credit"),
        "amount_minor": -line_amount, "service_start": np.full(len(which), "2026-11-17"),
        "service_end": np.full(len(which), "2026-12-01"),
        "credit_id": pa.array(np.where(is_orphan, np.char.add(np.asarray(ids)[c][which].astype(str), ":elsewhere"),
                                       cid)),
    }
    credit_invoice_ids = _join("inv-", pa.array(np.asarray(ids)[c]), "-credit")
    issued = pa.array(np.where(faults["late"][c], "2026-12-24", "2026-11-27"))
    credit_currency = pa.array(np.where(faults["currency"][c], "CHF", np.asarray(currency)[c]))
    credit_table = _invoices(credit_invoice_ids, pa.array(np.asarray(tenants)[c]), issued, credit_currency,
                             credit_lines, counts)
    tables.append(credit_table)
    tables.append(credit_table.filter(pa.array(faults["redelivered"][c])))  # the same invoices, delivered again
    # 4. a duplicate: the credit again on a second invoice
    d = np.flatnonzero(has & faults["duplicate"])
    tables.append(_invoices(_join("inv-", pa.array(np.asarray(ids)[d]), "-credit-again"),
                            pa.array(np.asarray(tenants)[d]), pa.array(np.full(len(d), "2026-11-28")),
                            pa.array(np.asarray(currency)[d]),
                            lines(_join(pa.array(np.asarray(ids)[d]), "-d1"), pa.array(np.asarray(old_sub)[d]),
                                  "credit", -credit[d], "2026-11-17", "2026-12-01", pa.array(np.asarray(credit_ids)[d])),
                            np.ones(len(d), np.int64)))
    # 5. an overlap: the old plan's December billed on 12-01 as if nothing had changed
    o = np.flatnonzero(faults["overlap"])
    tables.append(_invoices(_join("inv-", pa.array(np.asarray(old_sub)[o]), "-2026-12-01"),
                            pa.array(np.asarray(tenants)[o]), pa.array(np.full(len(o), "2026-12-01")),
                            pa.array(np.asarray(currency)[o]),
                            lines(_join(pa.array(np.asarray(old_sub)[o]), "-p2"), pa.array(np.asarray(old_sub)[o]),
                                  "charge", billed[o], "2026-12-01", "2027-01-01"), np.ones(len(o), np.int64)))
    invoices = pa.concat_tables([t.cast(tables[0].schema) for t in tables])
    rows = invoices.num_rows
    full = _table(Topic.INVOICE_ISSUED, {"partition": np.zeros(rows, np.int32), "offset": np.arange(rows),
                                         "event_id": _join(invoices["invoice_id"], ":",
                                                           pa.array(np.arange(rows).astype(str))),
                                         "tenant_id": invoices["tenant_id"], "invoice_id": invoices["invoice_id"],
                                         "issued_on": invoices["issued_on"], "currency": invoices["currency"]})
    full = full.set_column(full.schema.get_field_index("lines"), "lines", invoices["lines"])
    _write(root, Topic.INVOICE_ISSUED, full, 200_000)
    line_count = int(pc.sum(pc.list_value_length(invoices["lines"])).as_py())
    return {"lines": line_count, "faults": {k: int(v.sum()) for k, v in faults.items()}}


DUCKDB_SQL = """
CREATE TEMP VIEW switches AS SELECT DISTINCT ON (upgrade_id) upgrade_id, tenant_id, old_subscription_id,
    new_subscription_id, CAST(effective_date AS DATE) AS e, currency
    FROM read_parquet('{lake}/topic=billing.switch/*/*.parquet') ORDER BY upgrade_id, partition, "offset";
CREATE TEMP VIEW credits AS SELECT DISTINCT ON (credit_id) credit_id, upgrade_id, tenant_id, currency, amount_minor,
    forfeit_minor, CAST(due_by AS DATE) AS due_by, partition, "offset"
    FROM read_parquet('{lake}/topic=credit.issued/*/*.parquet') ORDER BY credit_id, partition, "offset";
CREATE TEMP VIEW requests AS SELECT DISTINCT ON (upgrade_id) upgrade_id, CAST(period_start AS DATE) ps,
    CAST(period_end AS DATE) pe, billed_minor FROM read_parquet('{lake}/topic=upgrade.requested/*/*.parquet')
    ORDER BY upgrade_id, partition, "offset";
-- what the rules owe: the unused days [e, pe) clamped to the period, and the credit for them
CREATE TEMP TABLE owed AS SELECT s.upgrade_id, s.e, s.currency,
    greatest(0, least(q.pe - s.e, q.pe - q.ps)) AS days,
    (2 * q.billed_minor * greatest(0, least(q.pe - s.e, q.pe - q.ps)) + (q.pe - q.ps)) // (2 * (q.pe - q.ps)) AS credit
    FROM switches s JOIN requests q USING (upgrade_id);
-- an invoice counts once (its first delivery), then one row per line
CREATE TEMP TABLE lines AS SELECT i.invoice_id, i.tenant_id, CAST(i.issued_on AS DATE) issued_on, i.currency,
    l.line_id, l.subscription_id, l.kind, l.amount_minor, CAST(l.service_start AS DATE) service_start,
    CAST(l.service_end AS DATE) service_end, l.credit_id
    FROM (SELECT DISTINCT ON (invoice_id) * FROM read_parquet('{lake}/topic=invoice.issued/*/*.parquet')
          ORDER BY invoice_id, partition, "offset") i, UNNEST(i.lines) AS t(l);
-- per issued credit and invoice carrying it: its lines summed, and which invoice it is (1 = the first)
CREATE TEMP TABLE credit_invoices AS SELECT c.credit_id, c.upgrade_id, c.currency AS issued_in, c.amount_minor,
    c.due_by, l.invoice_id, min(l.issued_on) issued_on, min(l.currency) currency, -sum(l.amount_minor) invoiced,
    row_number() OVER (PARTITION BY c.credit_id ORDER BY min(l.issued_on), l.invoice_id) AS nth
    FROM credits c JOIN lines l ON l.kind = 'credit' AND l.credit_id = c.credit_id
    GROUP BY c.credit_id, c.upgrade_id, c.currency, c.amount_minor, c.due_by, l.invoice_id;
CREATE TEMP TABLE findings AS
SELECT 'OVERLAP' code, upgrade_id, currency, 0 delta FROM (
    SELECT s.upgrade_id, l.currency, sum(greatest(0, l.service_end - greatest(l.service_start, s.e))) charged,
           coalesce(min(o.days), 0) credited
    FROM lines l JOIN switches s ON l.subscription_id = s.old_subscription_id LEFT JOIN owed o USING (upgrade_id)
    WHERE l.kind = 'charge' GROUP BY s.upgrade_id, l.currency) WHERE charged > credited
UNION ALL
SELECT 'NEW_BILLING_GAP', s.upgrade_id, s.currency, 0 FROM switches s JOIN (
    SELECT subscription_id, min(service_start) first FROM lines WHERE kind = 'charge' GROUP BY 1) f
  ON f.subscription_id = s.new_subscription_id WHERE f.first > s.e
UNION ALL
SELECT 'NEW_BILLING_EARLY', s.upgrade_id, s.currency, 0 FROM lines l JOIN switches s
  ON l.subscription_id = s.new_subscription_id WHERE l.kind = 'charge' AND l.service_start < s.e
UNION ALL
SELECT 'MISSING_CREDIT', c.upgrade_id, c.currency, -c.amount_minor FROM credits c
  WHERE c.due_by < DATE '{run}' AND c.credit_id NOT IN (SELECT credit_id FROM credit_invoices)
UNION ALL
SELECT 'MISSING_CREDIT', o.upgrade_id, o.currency, -o.credit FROM owed o
  WHERE o.credit > 0 AND o.e + 30 < DATE '{run}' AND o.upgrade_id NOT IN (SELECT upgrade_id FROM credits)
UNION ALL
SELECT 'LATE_CREDIT', upgrade_id, currency, 0 FROM credit_invoices WHERE issued_on > due_by
UNION ALL
SELECT 'AMOUNT_MISMATCH', upgrade_id, currency, invoiced - amount_minor FROM credit_invoices
  WHERE nth = 1 AND currency = issued_in AND invoiced <> amount_minor
UNION ALL
SELECT 'AMOUNT_MISMATCH', c.upgrade_id, c.currency, c.amount_minor - o.credit FROM credits c JOIN owed o
  USING (upgrade_id) WHERE c.amount_minor <> o.credit
UNION ALL
SELECT 'DUPLICATE_CREDIT', upgrade_id, currency, invoiced FROM credit_invoices WHERE nth > 1
UNION ALL
SELECT 'DUPLICATE_CREDIT', upgrade_id, currency, amount_minor FROM (
    SELECT c.*, row_number() OVER (PARTITION BY c.upgrade_id ORDER BY c.partition, c."offset") n
    FROM credits c WHERE c.upgrade_id IN (SELECT upgrade_id FROM switches)) WHERE n > 1
UNION ALL
SELECT 'ORPHAN_CREDIT', NULL, l.currency, -l.amount_minor FROM lines l
  WHERE l.kind = 'credit' AND (l.credit_id IS NULL OR l.credit_id NOT IN (SELECT credit_id FROM credits))
UNION ALL
SELECT 'CURRENCY_MISMATCH', upgrade_id, currency, 0 FROM credit_invoices WHERE currency <> issued_in
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


# The child reports its own peak RSS (VmHWM of its own address space) when it exits: the
# kernel's ru_maxrss of a child would also count the pages of this process at the fork,
# which grow with every DuckDB run in it.
CHILD = """
import atexit, runpy, sys
def report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("peak_kib=%s\\n" % line.split()[1])
atexit.register(report)
sys.argv = ["planshift", *sys.argv[1:]]
runpy.run_module("cli", run_name="__main__")
"""


def run_planshift(work: Path, buckets: int | None = None) -> tuple[float, float, str]:
    """`planshift reconcile` as a child process: wall seconds, its own peak RSS (GiB), its output."""
    env = {**os.environ, "PLANSHIFT_DATA_DIR": str(work)}
    command = [sys.executable, "-c", CHILD, "reconcile", "--date", RUN_DATE, "--no-chart"]
    if buckets:
        command += ["--buckets", str(buckets)]
    began = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr)
        raise SystemExit("planshift reconcile failed")
    peak = next((int(line.split("=")[1]) for line in proc.stderr.splitlines() if line.startswith("peak_kib=")), 0)
    return elapsed, peak / 1024 / 1024, proc.stdout.strip()


def our_counts(work: Path) -> dict:
    ours = pq.read_table(work / "reports" / "reconciliation" / "summary").to_pandas()
    return {k: int(v) for k, v in ours.groupby("check_code")["count"].sum().items()}


def ensure_lake(work: Path, upgrades: int, lines: int) -> Path:
    lake = work / "lake"
    if not (lake / "_manifests" / f"topic={Topic.INVOICE_ISSUED}").exists():  # invoices are written last
        shutil.rmtree(lake, ignore_errors=True)
        began = time.perf_counter()
        print(f"generating {upgrades:,} upgrades and ~{lines:,} invoice lines in {work} …", flush=True)
        info = generate(lake, upgrades, lines)
        print(f"generated {info['lines']:,} lines in {time.perf_counter() - began:.0f}s; faults {info['faults']}",
              flush=True)
    return lake


SCALES = ((1_000_000, 100_000), (3_000_000, 300_000), (10_000_000, 1_000_000), (30_000_000, 3_000_000))


def scales(work_root: Path, keep: bool, rounds: int = 1) -> None:
    """Time and peak memory as the lake grows: 1M, 3M, 10M and 30M lines.

    With `rounds` > 1 the 10M and 30M runs are repeated, alternated (10M, 30M, 10M, 30M, …) so
    both see the same machine, and their medians are compared: on a shared machine one pair of
    runs can differ by a quarter from the next.
    """
    results = []
    for lines, upgrades in SCALES:
        work = work_root / f"{lines // 1_000_000}M"
        try:
            lake = ensure_lake(work, upgrades, lines)
            elapsed, peak, _ = run_planshift(work)
            duck, duck_counts = run_duckdb(lake, work / "duckdb")
            agree = our_counts(work) == duck_counts
            results.append((lines, upgrades, elapsed, peak, duck, agree))
            print(f"{lines / 1e6:>4.0f}M lines × {upgrades / 1e6:.1f}M upgrades: planshift {elapsed:6.1f}s, "
                  f"peak {peak:.2f} GiB; DuckDB {duck:6.1f}s (ratio {elapsed / duck:.2f}); "
                  f"findings per check agree: {agree}", flush=True)
        finally:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)
    by_lines = {r[0]: r for r in results}
    if 10_000_000 in by_lines and 30_000_000 in by_lines:
        ten, thirty = by_lines[10_000_000], by_lines[30_000_000]
        growth = thirty[2] / ten[2]
        if rounds > 1 and keep:
            times = {10: [ten[2]], 30: [thirty[2]]}
            for round_no in range(2, rounds + 1):
                for millions in (10, 30):
                    elapsed, peak, _ = run_planshift(work_root / f"{millions}M")
                    times[millions].append(elapsed)
                print(f"round {round_no}: 10M {times[10][-1]:.1f}s, 30M {times[30][-1]:.1f}s "
                      f"(ratio {times[30][-1] / times[10][-1]:.2f})", flush=True)
            ten_s, thirty_s = statistics.median(times[10]), statistics.median(times[30])
            growth = thirty_s / ten_s
            print(f"medians of {rounds} rounds: 10M {ten_s:.1f}s, 30M {thirty_s:.1f}s")
        print(f"\n30M vs 10M: {growth:.2f}× the time (goal ≤ 3.5: {'met' if growth <= 3.5 else 'NOT met'}), "
              f"peak {thirty[3]:.2f} GiB (goal ≤ 8: {'met' if thirty[3] <= 8 else 'NOT met'}); "
              f"10M peak {ten[3]:.2f} GiB (goal < 4: {'met' if ten[3] < 4 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upgrades", type=int, default=1_000_000)
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this folder")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each, alternated; medians are compared")
    parser.add_argument("--scales", action="store_true",
                        help="instead: 1M, 3M, 10M and 30M lines (time, peak memory, DuckDB); with --keep, "
                             "the 10M and 30M runs are repeated --rounds times, alternated")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="planshift-reconcile-bench-"))
    try:
        if args.scales:
            scales(work, keep=args.keep is not None, rounds=args.rounds if args.keep else 1)
            return
        lake = ensure_lake(work, args.upgrades, args.lines)
        ours_s, duck_s, peaks = [], [], []
        for round_no in range(1, args.rounds + 1):  # alternated, so both see the same machine
            elapsed, peak, output = run_planshift(work)
            ours_s.append(elapsed)
            peaks.append(peak)
            duck, duck_counts = run_duckdb(lake, work / "duckdb")
            duck_s.append(duck)
            print(f"round {round_no}: planshift {elapsed:.2f}s ({peak:.2f} GiB), DuckDB {duck:.2f}s, "
                  f"ratio {elapsed / duck:.2f}", flush=True)
        print(output)
        ours = our_counts(work)
        peak_gib = max(peaks)
        elapsed, duck = statistics.median(ours_s), statistics.median(duck_s)
        print(f"\nmedians of {args.rounds} rounds")
        print(f"planshift reconcile : {elapsed:6.1f}s wall, peak RSS {peak_gib:.2f} GiB "
              f"(goals: ≤ 60 s {'met' if elapsed <= 60 else 'NOT met'}, < 4 GiB {'met' if peak_gib < 4 else 'NOT met'})")
        print(f"DuckDB, same checks : {duck:6.1f}s wall")
        ratio = elapsed / duck
        print(f"ratio planshift/DuckDB: {ratio:.2f}  (goal ≤ 2: {'met' if ratio <= 2 else 'NOT met'})")
        agree = {k: (ours.get(k, 0), duck_counts.get(k, 0)) for k in sorted(set(ours) | set(duck_counts))}
        print("findings per check (planshift, DuckDB):", agree,
              "— agree" if all(a == b for a, b in agree.values()) else "— DISAGREE")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
