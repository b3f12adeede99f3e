"""`planshift reconcile --date D`: the nightly check of invoices against what planshift did.

Reads the lake (what the archiver kept of `billing.switch`, `credit.issued`,
`upgrade.requested`, completed `upgrade.status` and `invoice.issued`) up to and
including D into the plain frames of a `Ledger`, runs every check of CONTRACT.md §6 r2
(`planshift/domain/reconciliation/`) and writes three Hive-partitioned Parquet outputs for
finance under `PLANSHIFT_DATA_DIR/reports/reconciliation/`:

    findings/run_date=D/part-0.parquet   one row per finding
    upgrades/run_date=D/part-0.parquet   one row per completed upgrade: MATCHED, OPEN, PENDING
    summary/run_date=D/part-0.parquet    per check_code × currency: count and summed delta

Each partition is written to a folder beside it and renamed into place, replacing a
previous run of the same date, so readers see the old run or the new one. The same
inputs give byte-identical files: rows are sorted, nothing depends on the clock. A
one-page PNG chart of the findings by check and currency goes to `charts/findings-D.png`.

Memory stays bounded as the lake grows: the invoice files are read a group at a time (in
a small thread pool: Arrow releases the GIL), and of their lines only credits and the
charges of switched subscriptions are kept, in Arrow. Then the work is split into **tenant
buckets** (`--buckets N`; by default one per 4 million archived invoices): every check
looks at one tenant's upgrades and invoices only, so each bucket — its events, its ledger
(pandas), its checks — is an independent task, done one after another here, whose findings
are concatenated; the pandas work, the bulk of the memory, follows the bucket, not the
month. A larger deployment could hand the buckets to a distributed engine (Dask, Spark)
after the same split. `bench/reconcile_scale.py` measures it beside DuckDB.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from planshift.contract import Topic
from planshift.domain import reconciliation as rules
from planshift.settings import Settings
from planshift.storage.lake import SCHEMAS, Lake

DATE_COLUMNS = {"effective_date", "due_by", "issued_on", "service_start", "service_end", "period_start",
                "period_end", "prepaid_term_start", "prepaid_term_end"}
LINE_COLUMNS = ["line_id", "subscription_id", "kind", "amount_minor", "service_start", "service_end", "credit_id"]
INVOICE_COLUMNS = ["invoice_id", "tenant_id", "issued_on", "currency"]
INVOICES_PER_BUCKET = 4_000_000
GROUP_INVOICES = 1_000_000  # at least this many invoices are read together, for one lookup of the lines to keep
GROUPS = 4  # … and the invoices in at most about this many groups
COLUMNS = {
    Topic.BILLING_SWITCH: ["upgrade_id", "tenant_id", "old_subscription_id", "new_subscription_id", "effective_date",
                           "currency", "new_total_cost_minor"],
    Topic.CREDIT_ISSUED: ["credit_id", "upgrade_id", "tenant_id", "subscription_id", "currency", "amount_minor",
                          "unused_days", "forfeit_minor", "due_by"],
    Topic.UPGRADE_REQUESTED: ["upgrade_id", "tenant_id", "period_start", "period_end", "billed_minor",
                              "prepaid_term_start", "prepaid_term_end", "prepaid_paid_minor"],
    Topic.UPGRADE_STATUS: ["upgrade_id", "tenant_id", "status", "credit_minor", "forfeit_minor", "currency"],
}


@dataclass
class ReconcileResult:
    run_date: date
    findings: pd.DataFrame
    upgrades: pd.DataFrame
    summary: pd.DataFrame
    output_dir: Path
    chart: Path | None
    seconds: float

    def describe(self) -> str:
        counts = self.upgrades["status"].value_counts()
        lines = [f"reconciliation for {self.run_date}: {len(self.upgrades)} completed upgrades — "
                 f"{counts.get('MATCHED', 0)} matched, {counts.get('OPEN', 0)} open, {counts.get('PENDING', 0)} pending; "
                 f"{len(self.findings)} findings in {self.seconds:.1f}s"]
        for row in self.summary.itertuples(index=False):
            lines.append(f"  {row.check_code:<18} {row.currency or '-':<4} {row.count:>8}  Δ {row.delta_minor:>14}")
        lines.append(f"written under {self.output_dir}" + (f"; chart {self.chart}" if self.chart else ""))
        return "\n".join(lines)


def _dates(column):
    """ISO dates (strings in the lake) as date32; a date32 column as it is."""
    return pc.cast(column, pa.date32(), safe=False)


def _frame(table: pa.Table) -> pd.DataFrame:
    """Arrow → pandas: strings stay Arrow-backed, dates become datetime64[ns], integers nullable."""
    table = table.combine_chunks()
    for name in table.column_names:
        if name in DATE_COLUMNS:
            table = table.set_column(table.schema.get_field_index(name), name,
                                     pc.cast(_dates(table[name]), pa.timestamp("ns")))
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow"),
                                         pa.int64(): pd.Int64Dtype()}.get)


def bucket_of(tenants: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """Each row's tenant bucket: a stable hash of the tenant id, modulo the number of buckets
    (each distinct id is hashed once)."""
    if buckets == 1:
        return np.zeros(len(tenants), np.int64)
    if isinstance(tenants, pa.ChunkedArray):
        tenants = tenants.combine_chunks()
    encoded = pc.dictionary_encode(tenants)
    distinct = np.asarray(encoded.dictionary.to_numpy(zero_copy_only=False), dtype=object)
    per_tenant = (pd.util.hash_array(distinct, categorize=False) % np.uint64(buckets)).astype(np.int64)
    return per_tenant[encoded.indices.to_numpy(zero_copy_only=False)]


def split(table: pa.Table, buckets: int, by: np.ndarray | None = None) -> list[pa.Table]:
    """`table`'s rows per tenant bucket (in their order within each bucket)."""
    if buckets == 1:
        return [table]
    bucket = bucket_of(table["tenant_id"], buckets) if by is None else by
    order = np.argsort(bucket, kind="stable")
    ordered = table.take(pa.array(order))
    ends = np.cumsum(np.bincount(bucket, minlength=buckets))
    return [ordered.slice(int(end - size), int(size)) for end, size in zip(ends, np.bincount(bucket, minlength=buckets))]


INVOICE_SCHEMA = pa.schema([SCHEMAS[Topic.INVOICE_ISSUED].field(c) for c in (*INVOICE_COLUMNS, "lines")])


def _read_invoices(path: Path, first_delivery: int) -> tuple[pa.Table, pa.Array]:
    """One invoice file's invoices, with each one's `delivery`: its number in archive order."""
    table = pq.read_table(path, columns=INVOICE_SCHEMA.names, schema=INVOICE_SCHEMA)
    return table, pa.array(np.arange(first_delivery, first_delivery + table.num_rows))


def _kept_lines(table: pa.Table, delivery: pa.Array, keep: pa.Array, buckets: int) -> list[pa.Table]:
    """The lines `keep` marks (over the file's flattened lines), with their invoice's columns,
    split into tenant buckets (file by file, in the pool: small hash tables, in parallel)."""
    kept = pc.indices_nonzero(keep)
    lines = table["lines"]
    flat, rows = pc.take(pc.list_flatten(lines), kept), pc.take(pc.list_parent_indices(lines), kept)
    columns = {name: pc.take(table[name], rows) for name in INVOICE_COLUMNS}
    columns.update({name: pc.struct_field(flat, name) for name in LINE_COLUMNS})
    columns["delivery"] = pc.take(delivery, rows)
    return split(pa.table(columns), buckets)


def _chunks_of(array) -> list[pa.Array]:
    return array.chunks if isinstance(array, pa.ChunkedArray) else [array]


def invoice_files(lake: Lake, up_to: str) -> list[tuple[Path, int]]:
    """The invoice files up to `up_to`, each with its number of invoices (from its footer)."""
    return [(path, pq.read_metadata(path).num_rows) for path in lake.files(Topic.INVOICE_ISSUED, up_to)]


def read_lines(invoices: list[tuple[Path, int]], subscriptions: pa.Array, buckets: int = 1,
               progress: bool = False) -> list[pa.Table]:
    """The invoice lines a reconciliation needs — credits, and charges of `subscriptions` —
    with their invoice's columns and `delivery` (see `once_per_invoice`), as one Arrow table
    per tenant bucket.

    Files are read a group at a time (`GROUPS` groups of at least `GROUP_INVOICES` invoices),
    in a small thread pool; one set lookup per group tells which lines to keep (a lookup
    builds its hash table of `subscriptions` each time it is called, so once per file would
    cost more than the reading), and only the kept lines stay in memory."""
    files = [path for path, _ in invoices]
    sizes = [rows for _, rows in invoices]
    firsts = np.cumsum([0] + sizes)
    # A fixed number of groups, not a fixed size: the lookup's table grows with the lake, so
    # a lookup per fixed-size group would make the work grow with the square of the lake.
    per_group = max(GROUP_INVOICES, math.ceil(sum(sizes) / GROUPS))
    groups, group, rows = [], [], 0
    for i, size in enumerate(sizes):
        if group and rows + size > per_group:
            groups.append(group)
            group, rows = [], 0
        group.append(i)
        rows += size
    if group:
        groups.append(group)
    parts = []
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool, \
            tqdm(total=len(files), desc="invoices", unit="file", disable=not progress or None, leave=False) as bar:
        for group in groups:
            read = list(pool.map(lambda i: _read_invoices(files[i], int(firsts[i])), group))
            flat = [pc.list_flatten(table["lines"]) for table, _ in read]
            kinds = pa.chunked_array([c for f in flat for c in _chunks_of(pc.struct_field(f, "kind"))], pa.string())
            subs = pa.chunked_array([c for f in flat for c in _chunks_of(pc.struct_field(f, "subscription_id"))],
                                    pa.string())
            keep = pc.or_(pc.equal(kinds, "credit"), pc.is_in(subs, value_set=subscriptions))
            starts = np.cumsum([0] + [len(f) for f in flat])
            parts.extend(pool.map(lambda j: _kept_lines(read[j][0], read[j][1],
                                                        keep.slice(int(starts[j]), len(flat[j])), buckets),
                                  range(len(read))))
            del read, flat, kinds, subs, keep
            bar.update(len(group))
    if not parts:
        empty = {name: pa.array([], INVOICE_SCHEMA.field(name).type) for name in INVOICE_COLUMNS}
        empty.update({f.name: pa.array([], f.type) for f in INVOICE_SCHEMA.field("lines").type.value_type})
        empty["delivery"] = pa.array([], pa.int64())
        parts = [[pa.table(empty)] * buckets]
    return [pa.concat_tables([part[b] for part in parts]).combine_chunks() for b in range(buckets)]


def count_buckets(invoices: list[tuple[Path, int]]) -> int:
    return max(1, math.ceil(sum(rows for _, rows in invoices) / INVOICES_PER_BUCKET))


@dataclass
class Bucket:
    """One tenant bucket's archived events, as Arrow tables: an independent task."""

    switches: pa.Table
    credits: pa.Table
    requests: pa.Table
    completed: pa.Table
    lines: pa.Table


def read_buckets(lake: Lake, up_to: str, buckets: int, invoices: list[tuple[Path, int]],
                 progress: bool = False) -> list[Bucket]:
    """The lake up to `up_to`, read once and split into tenant buckets."""
    switches = lake.read(Topic.BILLING_SWITCH, COLUMNS[Topic.BILLING_SWITCH], up_to)
    subscriptions = pc.unique(pa.chunked_array(_chunks_of(switches["old_subscription_id"])
                                               + _chunks_of(switches["new_subscription_id"]), pa.string()))
    with ThreadPoolExecutor(max_workers=1) as background:  # the invoices, the bulk, while the rest is read
        reading = background.submit(read_lines, invoices, subscriptions, buckets, progress)
        topics = {topic: lake.read(topic, COLUMNS[topic], up_to)
                  for topic in (Topic.CREDIT_ISSUED, Topic.UPGRADE_REQUESTED, Topic.UPGRADE_STATUS)}
        statuses = topics.pop(Topic.UPGRADE_STATUS)
        completed = statuses.filter(pc.equal(statuses["status"], "completed"))
        del statuses
        others = [split(t, buckets) for t in (switches, topics[Topic.CREDIT_ISSUED],
                                              topics[Topic.UPGRADE_REQUESTED], completed)]
        lines = reading.result()
    parts = [*others, lines]
    return [Bucket(*(p[b] for p in parts)) for b in range(buckets)]


def reconcile_bucket(bucket: Bucket, run_date: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One tenant bucket, start to end: its ledger, its findings and its upgrades."""
    lines = _frame(bucket.lines)
    delivery = lines.pop("delivery").to_numpy("int64")
    ledger = rules.build(_frame(bucket.switches), _frame(bucket.requests), _frame(bucket.credits),
                         _frame(bucket.completed), rules.once_per_invoice(lines, delivery), run_date)
    del lines
    findings = rules.findings_table(ledger, rules.run_checks(ledger))
    return findings, rules.upgrades_table(ledger, findings)


def reconcile(settings: Settings, run_date: date, progress: bool = True, chart: bool = True,
              buckets: int | None = None) -> ReconcileResult:
    began = time.perf_counter()
    lake = Lake.for_settings(settings)
    invoices = invoice_files(lake, run_date.isoformat())
    buckets = buckets or count_buckets(invoices)
    work = read_buckets(lake, run_date.isoformat(), buckets, invoices, progress)
    parts = []
    for b in tqdm(range(buckets), desc="tenant buckets", unit="bucket",
                  disable=not progress or buckets == 1 or None, leave=False):
        parts.append(reconcile_bucket(work[b], run_date))
        work[b] = None  # this bucket's events are done with
    findings = _sorted_concat([f for f, _ in parts], ["check_code", "tenant_id", "upgrade_id", "credit_id",
                                                      "invoice_id", "line_id"], nulls_first=True)
    upgrades = _sorted_concat([u for _, u in parts], ["tenant_id", "upgrade_id"])
    summary = rules.summary_table(findings, run_date)

    root = settings.data_dir / "reports" / "reconciliation"
    with ThreadPoolExecutor(max_workers=1) as background:  # Parquet writing releases the GIL: chart meanwhile
        written = background.submit(lambda: [write_partition(root / name, run_date, frame.drop(columns=["run_date"]))
                                             for name, frame in (("findings", findings), ("upgrades", upgrades),
                                                                 ("summary", summary))])
        chart_path = write_chart(root / "charts" / f"findings-{run_date.isoformat()}.png", summary, run_date) \
            if chart else None
        written.result()
    return ReconcileResult(run_date, findings, upgrades, summary, root, chart_path, time.perf_counter() - began)


def _sorted_concat(frames: list[pd.DataFrame], by: list[str], nulls_first: bool = False) -> pd.DataFrame:
    if len(frames) == 1:
        return frames[0]
    return rules.reports.sort_rows(pd.concat(frames, ignore_index=True), by, nulls_first)


def write_partition(dataset: Path, run_date: date, frame: pd.DataFrame) -> Path:
    """Write `run_date=D/part-0.parquet` atomically, replacing an earlier run of D."""
    final = dataset / f"run_date={run_date.isoformat()}"
    staging = dataset / f".run_date={run_date.isoformat()}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, staging / "part-0.parquet", compression="zstd")
    old = dataset / f".run_date={run_date.isoformat()}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_chart(path: Path, summary: pd.DataFrame, run_date: date) -> Path:
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(11.7, 8.3))  # one A4 page, landscape
    if len(summary):
        pivot = summary.assign(currency=summary["currency"].fillna("—")).pivot_table(
            index="check_code", columns="currency", values="count", aggfunc="sum", fill_value=0)
        pivot = pivot.reindex([c for c in rules.CHECK_CODES if c in pivot.index])
        pivot.plot.barh(ax=ax, stacked=True, width=0.6)
        ax.invert_yaxis()
        ax.set_xlabel("findings")
        ax.set_ylabel("")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(title="currency")
        ax.set_xlim(0, max(1, pivot.sum(axis=1).max()) * 1.12)
        for position, total in enumerate(pivot.sum(axis=1)):
            ax.annotate(f"{int(total):,}", (total, position), xytext=(4, 0), textcoords="offset points",
                        va="center")
        deltas = summary.groupby("currency", dropna=False)["delta_minor"].sum()
        fig.text(0.01, 0.01, "summed Δ (minor units): " + ", ".join(
            f"{currency if isinstance(currency, str) else '—'} {int(delta):+,}" for currency, delta in deltas.items()),
                 fontsize=9)
    else:
        ax.text(0.5, 0.5, "no findings", ha="center", va="center", fontsize=20)
        ax.set_axis_off()
    ax.set_title(f"planshift reconciliation {run_date.isoformat()}: findings by check and currency")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.partial")
    fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    tmp.replace(path)
    return path
