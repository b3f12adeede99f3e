"""Building events: the envelope every event carries (CONTRACT.md §1), and their bytes on the wire."""

from __future__ import annotations

import functools
import uuid
from datetime import datetime, timezone
from typing import Any

import orjson

from planshift.contract import SCHEMA_VERSION, Topic, status_id


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def rfc3339(moment: datetime) -> str:
    """`2026-11-17T09:30:00.000000Z` (isoformat: several times faster than strftime)."""
    if moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # "+00:00" → "Z"


def event(event_type: str, tenant_id: str, event_id: str | None = None, occurred_at: datetime | str | None = None,
          **fields: Any) -> dict[str, Any]:
    """A complete event: the envelope, then the event's own fields. `occurred_at` may be
    given already formatted (events of one moment share one `rfc3339` call)."""
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "schema_version": SCHEMA_VERSION,
        "occurred_at": occurred_at if isinstance(occurred_at, str) else rfc3339(occurred_at or utc_now()),
        "tenant_id": tenant_id,
        **fields,
    }


def with_envelope(value: dict[str, Any], event_type: str) -> dict[str, Any]:
    """`value` with the envelope fields it lacks filled in (never overwritten)."""
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "schema_version": SCHEMA_VERSION,
        "occurred_at": rfc3339(utc_now()),
        **value,
    }


def upgrade_status(tenant_id: str, upgrade_id: str, status: str, *, step: int | None = None,
                   reasons: list[dict] | None = None, occurred_at: datetime | str | None = None,
                   **fields: Any) -> dict[str, Any]:
    """An `upgrade.status` event (CONTRACT.md §4), whoever writes it: one id per status,
    and per progress step while migrating (`status_id`), so a redo writes the same event."""
    return event(Topic.UPGRADE_STATUS, tenant_id, status_id(upgrade_id, status, step), occurred_at,
                 upgrade_id=upgrade_id, status=status, reasons=reasons or [], **fields)


def credit_check_requested(tenant_id: str, upgrade_id: str, reason: str, amount_minor: int, currency: str,
                           due_by: str, occurred_at: datetime | str | None = None) -> dict[str, Any]:
    return event(Topic.CREDIT_CHECK_REQUESTED, tenant_id, f"{upgrade_id}:credit-check", occurred_at,
                 upgrade_id=upgrade_id, reason=reason, amount_minor=amount_minor, currency=currency, due_by=due_by)


def batch_completed(batch: dict[str, Any], outcome: str, occurred_at: datetime | str | None = None, *,
                    users_migrated: int = 0, users_already_migrated: int = 0, users_missing: int = 0,
                    service_plan_resets: list[dict] | None = None, error: str | None = None) -> dict[str, Any]:
    """A `license.batch.completed` event for one batch of `license.batches`: `completed`
    with its counts, or `failed` with the error (the batch is being dead-lettered)."""
    upgrade_id, batch_no = batch["upgrade_id"], batch["batch_no"]
    kind = "batch-completed" if outcome == "completed" else "batch-failed"
    extra = {} if error is None else {"error": error}
    return event(Topic.LICENSE_BATCH_COMPLETED, batch["tenant_id"], f"{upgrade_id}:{kind}:{batch_no}", occurred_at,
                 upgrade_id=upgrade_id, outcome=outcome, batch_no=batch_no, batch_count=batch["batch_count"],
                 **extra, users_migrated=users_migrated, users_already_migrated=users_already_migrated,
                 users_missing=users_missing, service_plan_resets=service_plan_resets or [],
                 source_subscription_id=batch["source_subscription_id"], source_sku=batch["source_sku"],
                 target_subscription_id=batch["target_subscription_id"], target_sku=batch["target_sku"],
                 terms=batch["terms"])


def upgrade_ended(tenant_id: str, upgrade_id: str, status: str) -> dict[str, Any]:
    """The internal `upgrade.ended` event, written in the same transaction as the
    upgrade's `completed` or `failed` status: intake's signal to free the tenant."""
    return event(Topic.UPGRADE_ENDED, tenant_id, f"{upgrade_id}:ended", upgrade_id=upgrade_id, status=status)


def encode_json(value: Any) -> bytes:
    # Compact, UTF-8 and key-ordered: the same event always has the same bytes.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def encode_key(key: str | None) -> bytes | None:
    return None if key is None else key.encode()


@functools.lru_cache(maxsize=256)
def event_headers(event_type: str, schema_version: int = 1) -> list[tuple[str, bytes]]:
    """The headers every event carries; one shared (never modified) list per event type."""
    return [("event_type", event_type.encode()), ("schema_version", str(schema_version).encode())]
