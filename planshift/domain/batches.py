"""Batch planning: a tenant's users split into licence-migration batches.

Batches are keyed `{upgrade_id}:{batch_no}` and placed by `kafka.partitioning.spread`
(round-robin from a partition chosen by the upgrade id), so one tenant's batches cover
the partitions of `license.batches` evenly and migration workers run them in parallel
("many users take longer").
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

from planshift.contract import batch_id


def split(user_ids: Sequence[str], batch_size: int) -> list[Sequence[str]]:
    """Batches of at most `batch_size` users; one empty batch when there are no users,
    so that every upgrade has at least one batch whose completion settles it."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if not user_ids:
        return [user_ids[:0]]
    return [user_ids[i:i + batch_size] for i in range(0, len(user_ids), batch_size)]


def billing_terms(request: Mapping[str, Any], source: Mapping[str, Any], started_at: str,
                  users_total: int) -> dict[str, Any]:
    """What settlement needs of the request, carried on every batch and completion."""
    return {
        "licenses": request["licenses"],
        "billing_frequency": request["billing_frequency"],
        "currency": request["currency"],
        "new_total_cost_minor": request["new_total_cost_minor"],
        "current_period": dict(source["current_period"]),
        "prepaid": dict(source["prepaid"]) if source.get("prepaid") else None,
        "migration_started_at": started_at,
        "users_total": users_total,
    }


def batch_events(request: Mapping[str, Any], source: Mapping[str, Any], user_ids: Sequence[str], batch_size: int,
                 occurred_at: str) -> Iterator[dict[str, Any]]:
    """The `license.batches` events of an upgrade."""
    chunks = split(user_ids, batch_size)
    upgrade_id = request["upgrade_id"]
    terms = billing_terms(request, source, occurred_at, len(user_ids))
    for batch_no, chunk in enumerate(chunks):
        yield {
            "event_id": batch_id(upgrade_id, batch_no),
            "event_type": "license.batches",
            "schema_version": 1,
            "occurred_at": occurred_at,
            "tenant_id": request["tenant_id"],
            "upgrade_id": upgrade_id,
            "batch_no": batch_no,
            "batch_count": len(chunks),
            "source_subscription_id": request["source_subscription_id"],
            "source_sku": source["sku"],
            "target_subscription_id": request["target_subscription_id"],
            "target_sku": request["target_sku"],
            "user_ids": list(chunk),
            "terms": terms,
        }
