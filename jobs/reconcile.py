"""`planshift reconcile --date D`: the nightly check of invoices against what planshift did.

Reads the lake (what the archiver kept of `billing.switch`, `credit.issued`,
`upgrade.requested`, completed `upgrade.status` and `invoice.issued`) up to and
including D, runs every check of CONTRACT.md §6 (`planshift/domain/reconciliation.py`)
and writes three Hive-partitioned Parquet outputs for finance under
`PLANSHIFT_DATA_DIR/reports/reconciliation/`:

    findings/run_date=D/part-0.parquet   one row per finding
    upgrades/run_date=D/part-0.parquet   one row per completed upgrade: MATCHED, OPEN, PENDING
    summary/run_date=D/part-0.parquet    per check_code × currency: count and summed delta

Each partition is written to a folder beside it and renamed into place, replacing a
previous run of the same date, so readers see the old run or the new one. The same
inputs give byte-identical files: rows are sorted, nothing depends on the clock.
Memory stays bounded: only the needed columns are read, strings stay Arrow-backed, and
of the invoice lines only credits and the switched subscriptions' charges are kept. A
one-page PNG chart of the findings by check and currency goes to `charts/findings-D.png`.

Where the time goes, and why it is spent this way (10M invoice lines, 1M upgrades):
the invoice files are read and flattened in the background from the first moment,
while the other topics are read; one hash lookup against the switches' subscriptions
both filters the lines and gives them integer codes; every key is encoded once
(`share_codes`) and the checks pair rows on those codes, copying only the rows that
become findings (`reconciliation.pairs`/`combine`); outputs are written while the
chart is drawn. `bench/reconcile_scale.py` measures it beside DuckDB.
"""

from __future__ import annotations

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
from planshift.domain import reconciliation as checks
from planshift.lake import SCHEMAS, Lake
from planshift.settings import Settings

DATE_COLUMNS = {"effective_date", "due_by", "issued_on", "service_start", "service_end", "period_start",
                "period_end", "prepaid_term_start", "prepaid_term_end"}
LINE_COLUMNS = ["line_id", "subscription_id", "kind", "amount_minor", "service_start", "service_end", "credit_id"]


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
    """Arrow → pandas: strings stay Arrow-backed, dates become datetime64, integers nullable.

    Columns become one chunk each: Arrow's `take` on a chunked string column first joins
    its chunks, so every later row selection would copy the whole column again."""
    table = table.combine_chunks()
    for name in table.column_names:
        if name in DATE_COLUMNS:
            table = table.set_column(table.schema.get_field_index(name), name,
                                     pc.cast(_dates(table[name]), pa.timestamp("ns")))
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow"),
                                         pa.int64(): pd.Int64Dtype()}.get)


def _read(lake: Lake, topic: str, columns: list[str], up_to: str) -> pd.DataFrame:
    return _frame(lake.read(topic, columns, up_to))


INVOICE_SCHEMA = pa.schema([SCHEMAS[Topic.INVOICE_ISSUED].field(c)
                            for c in ("invoice_id", "tenant_id", "issued_on", "currency", "lines")])


def _flatten(path: Path, invoice_schema: pa.Schema) -> tuple[pa.Table, pa.Array, pa.Array]:
    """One invoice file: its invoice columns, its lines (flattened) and each line's invoice row."""
    table = pq.read_table(path, columns=invoice_schema.names, schema=invoice_schema)
    return table, pc.list_flatten(table["lines"]), pc.list_parent_indices(table["lines"])


def _chunks(array) -> list[pa.Array]:
    return array.chunks if isinstance(array, pa.ChunkedArray) else [array]


def read_invoices(lake: Lake, up_to: str, progress: bool) -> list[tuple[pa.Table, pa.Array, pa.Array]]:
    """Every invoice file up to `up_to`, read and flattened in a small thread pool (Arrow
    releases the GIL): per file its invoice columns, its lines and each line's invoice row."""

    files = lake.files(Topic.INVOICE_ISSUED, up_to)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return list(tqdm(pool.map(lambda p: _flatten(p, INVOICE_SCHEMA), files), total=len(files),
                         desc="invoices", unit="file", disable=not progress or None, leave=False))


def select_lines(parts: list[tuple[pa.Table, pa.Array, pa.Array]],
                 subscriptions: pa.Array) -> tuple[pa.Table, np.ndarray]:
    """Invoice lines, one row per line, keeping credits and the charges of `subscriptions`
    (the switches' old and new subscriptions, distinct); with each kept line's index into
    `subscriptions` (-1 if none), which is the integer code `share_codes` would give it.

    One hash lookup of every line's subscription against `subscriptions` both filters
    the lines and encodes them; only the kept lines are copied."""
    if not parts:
        empty = {**{n: pa.array([], pa.string()) for n in ("invoice_id", "tenant_id", "issued_on", "currency")},
                 **{f.name: pa.array([], f.type) for f in INVOICE_SCHEMA.field("lines").type.value_type}}
        return pa.table(empty), np.array([], np.int64)
    subs = pa.chunked_array([c for _, flat, _ in parts for c in _chunks(pc.struct_field(flat, "subscription_id"))],
                            pa.string())
    kinds = pa.chunked_array([c for _, flat, _ in parts for c in _chunks(pc.struct_field(flat, "kind"))], pa.string())
    codes = checks.as_codes(pc.index_in(subs, value_set=subscriptions))
    keep = pc.equal(kinds, "credit").to_numpy(zero_copy_only=False) | (codes >= 0)
    starts = np.cumsum([0] + [len(flat) for _, flat, _ in parts])
    with ThreadPoolExecutor(max_workers=2) as pool:  # gathering the kept lines, file by file
        tables = pool.map(lambda i: _kept_lines(*parts[i], np.flatnonzero(keep[starts[i]:starts[i + 1]])),
                          range(len(parts)))
        return pa.concat_tables(list(tables)), codes[keep]


def _kept_lines(table: pa.Table, flat: pa.Array, parents: pa.Array, kept: np.ndarray) -> pa.Table:
    """One file's kept lines with their invoice's columns; dates parsed here, in the pool."""
    kept = pa.array(kept)
    flat = pc.take(flat, kept)  # filter first, then gather the invoice columns for the kept lines only
    rows = pc.take(parents, kept)
    columns = {name: pc.take(_dates(table[name]) if name in DATE_COLUMNS else table[name], rows)
               for name in ("invoice_id", "tenant_id", "issued_on", "currency")}
    for name in LINE_COLUMNS:
        column = pc.struct_field(flat, name)
        columns[name] = _dates(column) if name in DATE_COLUMNS else column
    return pa.table(columns)


def encode_subscriptions(switches: pd.DataFrame) -> pa.Array:
    """The switches' old and new subscriptions as one dictionary, returned; each switch
    gets its integer codes in it (`share_codes`' companions), so the invoice lines can be
    filtered and encoded against the same dictionary in one lookup (`select_lines`)."""
    olds, news = (pa.array(switches[c].array, pa.string()) for c in ("old_subscription_id", "new_subscription_id"))
    encoded = pa.chunked_array([olds, news], pa.string()).dictionary_encode()
    codes = checks.as_codes(pa.chunked_array([c.indices for c in encoded.chunks], pa.int32()))
    switches[checks.CODE.format("old_subscription_id")] = codes[:len(switches)]
    switches[checks.CODE.format("new_subscription_id")] = codes[len(switches):]
    return encoded.chunks[-1].dictionary if encoded.num_chunks else pa.array([], pa.string())


def tune_memory() -> None:
    """Keep freed memory for reuse instead of handing it back to the kernel at once.

    The job allocates and frees many large, short-lived arrays; by default both Arrow's
    allocator and glibc's return that memory straight away, and the next array of the
    same size faults it in again page by page. Measured on the 10M-line benchmark this
    kernel time was about a third of the run."""
    import ctypes

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(1000)
    except (NotImplementedError, AttributeError):  # a pyarrow built without jemalloc
        pass
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_top_pad, 1 << 28)
    libc.mallopt(m_mmap_threshold, 1 << 25)  # glibc's ceiling on 64-bit


def reconcile(settings: Settings, run_date: date, progress: bool = True, chart: bool = True) -> ReconcileResult:
    began = time.perf_counter()
    tune_memory()
    lake = Lake.for_settings(settings)
    up_to = run_date.isoformat()
    # Invoice lines are the bulk of the input and mostly Arrow work, which releases the
    # GIL: they are read in the background while the other topics are read and prepared.
    with ThreadPoolExecutor(max_workers=1) as background:
        invoices = background.submit(read_invoices, lake, up_to, progress)
        switches = _read(lake, Topic.BILLING_SWITCH, ["upgrade_id", "tenant_id", "old_subscription_id",
                                                       "new_subscription_id", "effective_date", "currency",
                                                       "new_total_cost_minor"], up_to)
        subscriptions = encode_subscriptions(switches)
        reading = background.submit(lambda: select_lines(invoices.result(), subscriptions))
        credits = _read(lake, Topic.CREDIT_ISSUED, ["credit_id", "upgrade_id", "tenant_id", "subscription_id",
                                                     "currency", "amount_minor", "forfeit_minor", "due_by"], up_to)
        requests = _read(lake, Topic.UPGRADE_REQUESTED, ["upgrade_id", "period_start", "period_end", "billed_minor",
                                                          "prepaid_term_start", "prepaid_term_end",
                                                          "prepaid_paid_minor"], up_to)
        statuses = _read(lake, Topic.UPGRADE_STATUS, ["upgrade_id", "tenant_id", "status", "credit_minor",
                                                       "forfeit_minor", "currency"], up_to)
        completed = statuses[statuses["status"] == "completed"]
        # One dictionary per kind of id: every join and lookup below runs on integer codes.
        checks.share_codes((switches, "upgrade_id"), (credits, "upgrade_id"), (requests, "upgrade_id"),
                           (completed, "upgrade_id"))
        switches = checks.first_of(switches, "upgrade_id")
        requests = checks.first_of(requests, "upgrade_id")
        completed = checks.first_of(completed, "upgrade_id")
        if chart:
            _pyplot()  # while the lines are still being read: the chart's import costs nothing then
        line_table, line_codes = reading.result()
        invoices = reading = None  # let the flattened invoices go: only the kept lines are needed
    lines = _frame(line_table)
    del line_table
    lines[checks.CODE.format("subscription_id")] = line_codes
    checks.share_codes((credits, "credit_id"), (lines, "credit_id"))
    credits = checks.first_of(credits, "credit_id")  # a record archived twice is one credit

    findings = checks.findings_table(switches, credits, requests, completed, lines, run_date)
    upgrades = checks.upgrades_table(completed, switches, credits, lines, findings, run_date)
    summary = checks.summary_table(findings, run_date)

    root = settings.data_dir / "reports" / "reconciliation"
    with ThreadPoolExecutor(max_workers=1) as background:  # Parquet writing releases the GIL: chart meanwhile
        written = background.submit(lambda: [write_partition(root / name, run_date, frame.drop(columns=["run_date"]))
                                             for name, frame in (("findings", findings), ("upgrades", upgrades),
                                                                 ("summary", summary))])
        chart_path = write_chart(root / "charts" / f"findings-{up_to}.png", summary, run_date) if chart else None
        written.result()
    return ReconcileResult(run_date, findings, upgrades, summary, root, chart_path, time.perf_counter() - began)


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
        pivot = pivot.reindex([c for c in checks.CHECK_CODES if c in pivot.index])
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
