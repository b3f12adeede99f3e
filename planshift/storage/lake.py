"""The event archive: a Hive-partitioned Parquet lake of planshift's business events.

Layout under `PLANSHIFT_DATA_DIR/lake`:

    topic=<topic>/event_date=<YYYY-MM-DD>/part-p<partition>-o<first>-<last>.parquet
    _manifests/topic=<topic>/partition=<p>/<first>-<last>.json

A file holds the records of one Kafka partition of one topic and one event date, and
its name carries the partition and offset range. A flush of the archiver can write
several files (one per event date), so it is made visible as a whole by its manifest,
written last and atomically: a file no manifest names is the leftover of a crashed
flush, ignored by readers and removed by the archiver when it resumes. The archiver
skips records at or below the highest offset a partition's manifests cover, so a record
is archived once, whatever the crashes (`consumers/archive.py`).

Each topic's rows have the envelope, the Kafka coordinates, the fields reconciliation
reads (typed), and the whole event as JSON (`value`), so nothing of an event is lost.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from planshift.contract import Topic
from planshift.settings import Settings

ARCHIVED_TOPICS = (Topic.UPGRADE_REQUESTED, Topic.UPGRADE_STATUS, Topic.BILLING_SWITCH, Topic.CREDIT_ISSUED,
                   Topic.INVOICE_ISSUED)

COMMON = [
    ("partition", pa.int32()),
    ("offset", pa.int64()),
    ("kafka_timestamp", pa.int64()),
    ("key", pa.string()),
    ("event_id", pa.string()),
    ("tenant_id", pa.string()),
    ("occurred_at", pa.string()),
]

LINE = pa.struct([
    ("line_id", pa.string()), ("subscription_id", pa.string()), ("kind", pa.string()),
    ("amount_minor", pa.int64()), ("service_start", pa.string()), ("service_end", pa.string()),
    ("credit_id", pa.string()),
])

FIELDS: dict[str, list[tuple[str, pa.DataType]]] = {
    Topic.UPGRADE_REQUESTED: [
        ("upgrade_id", pa.string()), ("source_subscription_id", pa.string()), ("target_subscription_id", pa.string()),
        ("target_sku", pa.string()), ("currency", pa.string()), ("new_total_cost_minor", pa.int64()),
        ("period_start", pa.string()), ("period_end", pa.string()), ("billed_minor", pa.int64()),
        ("prepaid_term_start", pa.string()), ("prepaid_term_end", pa.string()), ("prepaid_paid_minor", pa.int64()),
    ],
    Topic.UPGRADE_STATUS: [
        ("upgrade_id", pa.string()), ("status", pa.string()), ("credit_minor", pa.int64()),
        ("forfeit_minor", pa.int64()), ("currency", pa.string()),
    ],
    Topic.BILLING_SWITCH: [
        ("upgrade_id", pa.string()), ("old_subscription_id", pa.string()), ("old_sku", pa.string()),
        ("new_subscription_id", pa.string()), ("new_sku", pa.string()), ("licenses", pa.int64()),
        ("effective_date", pa.string()), ("billing_frequency", pa.string()), ("currency", pa.string()),
        ("new_total_cost_minor", pa.int64()),
    ],
    Topic.CREDIT_ISSUED: [
        ("credit_id", pa.string()), ("upgrade_id", pa.string()), ("subscription_id", pa.string()),
        ("currency", pa.string()), ("amount_minor", pa.int64()), ("basis", pa.string()),
        ("unused_days", pa.int64()), ("period_days", pa.int64()), ("period_start", pa.string()),
        ("period_end", pa.string()), ("forfeit_minor", pa.int64()), ("due_by", pa.string()),
    ],
    Topic.INVOICE_ISSUED: [
        ("invoice_id", pa.string()), ("issued_on", pa.string()), ("currency", pa.string()),
        ("lines", pa.list_(LINE)),
    ],
}

SCHEMAS: dict[str, pa.Schema] = {
    topic: pa.schema([*COMMON, *fields, ("value", pa.string())]) for topic, fields in FIELDS.items()
}


def _source(event: dict[str, Any]) -> dict[str, Any]:
    wanted = event.get("source_subscription_id")
    return next((s for s in event.get("tenant", {}).get("subscriptions", []) if s.get("subscription_id") == wanted), {})


def _flatten_request(event: dict[str, Any]) -> dict[str, Any]:
    source = _source(event)
    period = source.get("current_period") or {}
    prepaid = source.get("prepaid") or {}
    return {**event, "period_start": period.get("start"), "period_end": period.get("end"),
            "billed_minor": period.get("billed_minor"), "prepaid_term_start": prepaid.get("term_start"),
            "prepaid_term_end": prepaid.get("term_end"), "prepaid_paid_minor": prepaid.get("paid_minor")}


FLATTEN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {Topic.UPGRADE_REQUESTED: _flatten_request}


def event_date(event: dict[str, Any]) -> str:
    return str(event.get("occurred_at", ""))[:10] or "unknown"


def to_row(topic: str, partition: int, offset: int, timestamp: int, key: str | None,
           event: dict[str, Any], raw: str) -> dict[str, Any]:
    flat = FLATTEN.get(topic, lambda e: e)(event)
    row = {"partition": partition, "offset": offset, "kafka_timestamp": timestamp, "key": key, "value": raw}
    for name, _ in COMMON[4:] + FIELDS[topic]:
        row[name] = flat.get(name)
    if topic == Topic.INVOICE_ISSUED:
        row["lines"] = [{f.name: line.get(f.name) for f in LINE} for line in event.get("lines", [])]
    return row


@dataclass(frozen=True)
class Manifest:
    topic: str
    partition: int
    first: int
    last: int
    files: tuple[str, ...]  # relative to the lake root


class Lake:
    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def for_settings(cls, settings: Settings) -> "Lake":
        return cls(settings.data_dir / "lake")

    def _manifest_dir(self, topic: str, partition: int) -> Path:
        return self.root / "_manifests" / f"topic={topic}" / f"partition={partition}"

    def manifests(self, topic: str, partition: int | None = None) -> list[Manifest]:
        base = self.root / "_manifests" / f"topic={topic}"
        dirs = [base / f"partition={partition}"] if partition is not None else sorted(base.glob("partition=*"))
        found = []
        for directory in dirs:
            for path in sorted(directory.glob("*.json")):
                raw = json.loads(path.read_text())
                found.append(Manifest(topic, raw["partition"], raw["first"], raw["last"], tuple(raw["files"])))
        return found

    def next_offset(self, topic: str, partition: int) -> int | None:
        """Where archiving of a partition resumes: after the last manifest, or None if never archived."""
        lasts = [m.last for m in self.manifests(topic, partition)]
        return max(lasts) + 1 if lasts else None

    def remove_orphans(self, topic: str, partition: int) -> list[Path]:
        """Delete files of a partition that no manifest names (a flush that crashed half-way)."""
        named = {f for m in self.manifests(topic, partition) for f in m.files}
        removed = []
        for path in (self.root / f"topic={topic}").glob(f"event_date=*/part-p{partition:03d}-*.parquet"):
            if str(path.relative_to(self.root)) not in named:
                path.unlink()
                removed.append(path)
        for path in (self.root / f"topic={topic}").glob("event_date=*/.*.partial"):
            path.unlink()
        return removed

    def write(self, topic: str, partition: int, rows: list[dict[str, Any]]) -> Manifest:
        """Write one flush of one partition: a file per event date, then the manifest."""
        by_date: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_date[row.pop("_event_date")].append(row)
        files = []
        for day, day_rows in sorted(by_date.items()):
            first, last = day_rows[0]["offset"], day_rows[-1]["offset"]
            relative = Path(f"topic={topic}") / f"event_date={day}" / f"part-p{partition:03d}-o{first:012d}-{last:012d}.parquet"
            _write_atomically(pa.Table.from_pylist(day_rows, schema=SCHEMAS[topic]), self.root / relative)
            files.append(str(relative))
        manifest = Manifest(topic, partition, rows[0]["offset"] if rows else 0, max(r["offset"] for r in rows),
                            tuple(files))
        path = self._manifest_dir(topic, partition) / f"{manifest.first:012d}-{manifest.last:012d}.json"
        _write_text_atomically(path, json.dumps({"partition": partition, "first": manifest.first,
                                                 "last": manifest.last, "files": files}))
        return manifest

    def files(self, topic: str, up_to: str | None = None) -> list[Path]:
        """The committed files of a topic, optionally only event dates up to and including `up_to`."""
        paths = []
        for manifest in self.manifests(topic):
            for relative in manifest.files:
                day = relative.split("event_date=")[1].split("/")[0]
                if up_to is None or day <= up_to:
                    paths.append(self.root / relative)
        return sorted(paths)

    def read(self, topic: str, columns: Iterable[str] | None = None, up_to: str | None = None) -> pa.Table:
        files = self.files(topic, up_to)
        schema = SCHEMAS[topic]
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        if not files:
            return schema.empty_table()
        return pa.concat_tables([pq.read_table(f, columns=list(schema.names), schema=schema) for f in files])


def _write_atomically(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _write_text_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
