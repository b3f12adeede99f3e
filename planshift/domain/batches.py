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


# -- chained batches (a licence API with a per-tenant quota) ------------------------------
#
# Against a licence API that lets each tenant make only so many calls a second, a tenant's
# batches gain nothing from running side by side: they share one quota. Released all at once
# they would only fill every partition of `license.batches` ahead of everybody else's. So
# an upgrade under a quota is a chain: intake releases its first batch only, and the
# migration worker that completes batch n releases batch n+1 in the same transaction. Each
# batch names its successor's users too (`chain.next`: the next `size` holders of the source
# after its own last user, planned when it was released), so a worker can move a chain's
# next two batches while their records are on the way, and whoever reads a record moves the
# same users. One batch of the tenant is in the topic at a time, so a small tenant waits
# behind at most one.
CHAIN_SECONDS = 1.0  # a chained batch is about this long at the tenant's quota
CHAIN_MOST_USERS = 5_000  # and at most this many users (a record names four batches' users)
# How many batches after its own a chained record names (`chain.next`): what a worker may
# move ahead of the records, so that the tenant's calls go on while records commit and
# come round (bench/fairness.py: with one, a loaded worker's tenants lost a fifth of their
# quota waiting on the records; with three, none).
CHAIN_LOOKAHEAD = 3


def chain_size(calls_per_s: float, users_per_call: int = 20) -> int:
    """Users per chained batch: about CHAIN_SECONDS of the tenant's quota, at least one call."""
    return min(CHAIN_MOST_USERS, max(users_per_call, int(calls_per_s * users_per_call * CHAIN_SECONDS)))


def chained_first_batch(request: Mapping[str, Any], source: Mapping[str, Any], user_ids: Sequence[str], size: int,
                        occurred_at: str) -> dict[str, Any]:
    """Batch 0 of a chain over `user_ids` (in user-id order, as the directory lists them),
    naming the users of the CHAIN_LOOKAHEAD batches after it."""
    count = max(1, -(-len(user_ids) // size))
    first = next(batch_events(request, source, list(user_ids[:size]), size, occurred_at))
    first["batch_count"] = count
    first["terms"]["users_total"] = len(user_ids)
    first["chain"] = {"size": size, "after": user_ids[size - 1] if len(user_ids) >= size else
                      (user_ids[-1] if user_ids else None)}
    if count > 1:
        first["chain"]["next"] = [list(user_ids[size * k:size * (k + 1)])
                                  for k in range(1, min(count, 1 + CHAIN_LOOKAHEAD))]
    return first


def next_in_chain(batch: Mapping[str, Any], user_ids: Sequence[str],
                  named: Sequence[Sequence[str]] = ()) -> dict[str, Any] | None:
    """The batch after `batch` in its chain, with `user_ids` (the users `batch` named for it)
    and naming `named` for the batches after it. None after the last batch (its leftovers,
    if any, are settlement's late users)."""
    chain = batch.get("chain")
    if not chain or batch["batch_no"] + 1 >= batch["batch_count"]:
        return None
    batch_no = batch["batch_no"] + 1
    following = {"size": chain["size"], "after": user_ids[-1] if user_ids else chain["after"]}
    named = [list(u) for u in named][:max(0, batch["batch_count"] - 1 - batch_no)]
    if named:
        following["next"] = named
    return {**batch, "event_id": batch_id(batch["upgrade_id"], batch_no), "batch_no": batch_no,
            "user_ids": list(user_ids), "chain": following}
