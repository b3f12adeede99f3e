"""Files planshift leaves for people under `PLANSHIFT_DATA_DIR/reports`.

The reset report (issue 4): per upgrade, every user whose per-service settings the
upgrade reset, and what they had switched off, so an admin can redo them (the
article: "note such changes before upgrading so you can redo them").
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from planshift.settings import Settings

RESET_SCHEMA = pa.schema([
    ("tenant_id", pa.string()),
    ("upgrade_id", pa.string()),
    ("user_id", pa.string()),
    ("subscription_id", pa.string()),  # the old subscription, where the settings were
    ("sku", pa.string()),
    ("disabled_services", pa.list_(pa.string())),
])


def reset_report_path(settings: Settings, upgrade_id: str) -> Path:
    safe = upgrade_id.replace("/", "_")
    return settings.data_dir / "reports" / "resets" / f"upgrade_id={safe}" / "resets.parquet"


def write_atomically(table: pa.Table, path: Path) -> None:
    """Write next to the target, then rename: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    pq.write_table(table, tmp)
    tmp.replace(path)


def write_reset_report(settings: Settings, upgrade_id: str,
                       rows: Iterable[tuple[str, str, str, str, tuple[str, ...]]]) -> Path:
    """rows: (tenant_id, user_id, subscription_id, sku, disabled_services), as the directory records them."""
    columns: list[list] = [[] for _ in RESET_SCHEMA]
    for tenant_id, user_id, subscription_id, sku, disabled in rows:
        for column, value in zip(columns, (tenant_id, upgrade_id, user_id, subscription_id, sku, list(disabled))):
            column.append(value)
    path = reset_report_path(settings, upgrade_id)
    write_atomically(pa.table(columns, schema=RESET_SCHEMA), path)
    return path
