"""Migration workers (`planshift run migrate --instances N`): "many users take longer".

A consumer group over `license.batches` (12 partitions by default); each record is one
batch of at most `PLANSHIFT_BATCH_SIZE` users of one upgrade. For each batch, in one
directory transaction, every user gets the target licence with all services enabled
before losing the source licence, and what they had switched off is recorded; then
`license.batch.completed` goes out in the runtime's Kafka transaction.

Each completed batch is remembered in the worker's state store (changelog-backed, in
the same transaction as the completion), so a replay of `license.batches` emits no
second completion. The marker expires once its batch record can no longer be read
(`license.batches`' retention and one segment after it was written, or was handled if
that is later), so months of upgrades do not pile up in the workers' memory. The directory is outside Kafka's transaction, though, so a batch can
be applied and then, after a crash, handled again. That is why the directory's migration is idempotent: a repeat
finds its users already migrated, reports them so, and returns the same recorded resets,
and the completion that is finally committed counts every user once either way.

A directory error is retried (the runtime's attempts, with back-off); a batch that keeps
failing, or that the directory refuses (a source that is the target, a target that is
another subscription in use: `MigrationRefused`, not retried), is dead-lettered, and its
failure goes to settlement on `license.batch.completed` (`outcome: failed`). Settlement,
which owns the upgrade's statuses from here on, marks it `failed` with
`MIGRATION_FAILED` and frees the tenant; a later completion of that upgrade — a re-driven
dead letter, a replay — is ignored there, so a failed upgrade is never billed.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable

from planshift.contract import Topic, batch_key, lifetime_ms
from planshift.domain.batches import CHAIN_LOOKAHEAD, next_in_chain
from planshift.events import batch_completed
from planshift.logs import get_logger
from planshift.runtime import Context, ProcessorConfig, Source, StreamProcessor
from planshift.settings import Settings
from planshift.storage.directory import LicenceDirectory, open_directory

log = get_logger(__name__)


@dataclasses.dataclass
class _Chain:
    """What this worker knows of one upgrade's chain (a licence API's quota), and its moves
    ahead of the chain's records.

    Each record fixes its own users and those of the CHAIN_LOOKAHEAD batches after it
    (`chain.next`), so once record n has been read the worker moves batches n..n+3 in
    order while record n commits and its successors come round: the tenant's calls go on at
    its quota without waiting for Kafka in between. Only users a committed record names
    are moved, so whoever handles a batch after a rebalance or a crash moves the same
    users, and finds those moved ahead already migrated (the directory is idempotent)."""

    batch: dict[str, Any]  # the latest record seen: the upgrade's ids, subscriptions and SKU
    users: dict[int, list[str]] = dataclasses.field(default_factory=dict)  # batch_no → its users
    moved: dict[int, Future] = dataclasses.field(default_factory=dict)  # batch_no → (users, directory result)
    started: set[int] = dataclasses.field(default_factory=set)  # batch_nos being moved, or moved
    running: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # batch_no of a record → the users its successor names last (read when the record arrives)
    newest: dict[int, Future] = dataclasses.field(default_factory=dict)


GROUP_ID = "planshift-migrate"


class Migration:
    def __init__(self, directory: LicenceDirectory):
        self.directory = directory
        # A licence API answers several callers at once, and throttles each tenant on its own:
        # a poll's batches of different tenants are migrated side by side (each tenant's in
        # order), so one tenant waiting on its quota holds up nobody else's.
        self.side_by_side = getattr(directory, "concurrent", False)
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="tenant") if self.side_by_side else None
        self._started: dict[tuple[str, int], Future] = {}
        # Under a quota a tenant's batches are a chain (`_Chain`): upgrade_id → what this worker knows of it.
        self._chains: dict[str, _Chain] = {}

    def prepare(self, batches: list[dict[str, Any]]) -> None:
        """Start the poll's batches, tenant by tenant in parallel (a licence API only); a
        chain's batches go to its runner, which moves them in order, ahead of the records."""
        if self._pool is None:
            return
        if len(self._started) > 10_000:  # batches read and then given up in a rebalance
            self._started.clear()
        by_tenant: dict[str, list[tuple[dict[str, Any], Future]]] = {}
        for batch in batches:
            if batch.get("chain"):
                self._arrive(batch)
            elif _key(batch) not in self._started:  # else read again (or twice in this poll): under way
                moved = self._started[_key(batch)] = Future()
                by_tenant.setdefault(batch["tenant_id"], []).append((batch, moved))
        for tenant_batches in by_tenant.values():
            self._pool.submit(self._run_tenant, tenant_batches)

    def ready(self, batch: dict[str, Any]) -> bool:
        """Whether the moves `prepare` started for this batch are done (a licence API only):
        a worker does not hold other tenants' records while a chain's batch is under way."""
        if batch.get("chain"):
            chain = self._chains.get(batch["upgrade_id"])
            moved = chain.moved.get(batch["batch_no"]) if chain is not None else None
        else:
            moved = self._started.get(_key(batch))
        return moved is None or moved.done()

    def _run_tenant(self, batches: list[tuple[dict[str, Any], Future]]) -> None:
        for batch, moved in batches:
            moved.set_result(self._migrate(batch))

    # -- chains ----------------------------------------------------------------------
    def _arrive(self, batch: dict[str, Any]) -> None:
        """Record n of a chain has been read: its users and those it names for the batches
        after it may be moved, in order."""
        upgrade_id, n = batch["upgrade_id"], batch["batch_no"]
        if len(self._chains) > 10_000:  # chains that went to other workers (a rebalance)
            self._chains.clear()
        chain = self._chains.setdefault(upgrade_id, _Chain(batch))
        with chain.lock:
            chain.batch = batch
            for k in [k for k in chain.users if k < n - 1]:  # long done
                chain.users.pop(k), chain.moved.pop(k, None), chain.started.discard(k)
            for k in [k for k in chain.newest if k < n]:
                chain.newest.pop(k)
            named = [batch["user_ids"], *batch["chain"].get("next", [])]
            for k, users in enumerate(named, start=n):
                if k not in chain.started:  # (one being moved is checked against its record: `_chained_result`)
                    chain.users[k] = list(users)
                    chain.moved.setdefault(k, Future())
            if n not in chain.newest and len(named) > 1 and n + len(named) < batch["batch_count"]:
                # the users the successor record will name last: read now, beside the moves
                after = named[-1][-1] if named[-1] else batch["chain"]["after"]
                chain.newest[n] = self._pool.submit(self.directory.holders_after, batch["tenant_id"],
                                                    batch["source_subscription_id"], after, batch["chain"]["size"])
            if not chain.running:
                chain.running = True
                self._pool.submit(self._run_chain, chain)

    def _run_chain(self, chain: _Chain) -> None:
        """Move the chain's batches that records have named, in order."""
        while True:
            with chain.lock:
                waiting = [k for k in chain.users if k not in chain.started]
                if not waiting:
                    chain.running = False
                    return
                k = min(waiting)
                chain.started.add(k)
                users, moved, batch = chain.users[k], chain.moved[k], chain.batch
            result = self._migrate({**batch, "user_ids": users})
            moved.set_result((users, result))
            if isinstance(result, Exception):
                with chain.lock:  # the handlers move what is left themselves
                    for later in [j for j in chain.users if j > k and j not in chain.started]:
                        chain.users.pop(later)
                        chain.moved.pop(later).set_result((None, None))  # not moved: its handler does
                    chain.running = False
                return

    def _chained_result(self, batch: dict[str, Any]):
        """The runner's result for this record's batch if it moved the record's users, else None."""
        chain = self._chains.get(batch["upgrade_id"])
        if chain is None:
            return None
        with chain.lock:
            moved = chain.moved.get(batch["batch_no"])
            expected = batch["batch_no"] in chain.started or batch["batch_no"] in chain.users
        if moved is None or not expected:
            return None
        users, result = moved.result()
        if users != batch["user_ids"] or isinstance(result, Exception):
            return None
        return result

    def _next_users(self, batch: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        """The users of the batch after this one, and of those after it that its record
        names (`chain.next`): the ones this record names, moved along, and the next holders
        of the source after them."""
        n, count, chain = batch["batch_no"], batch["batch_count"], batch["chain"]
        named = [list(u) for u in chain.get("next", [])]
        last = min(count - 1, n + 1 + CHAIN_LOOKAHEAD)  # the furthest batch the successor names
        known = self._chains.get(batch["upgrade_id"])
        newest = known.newest.get(n) if known is not None else None
        if named and newest is not None and n + len(named) < last:
            try:
                named.append(newest.result())
            except Exception:  # noqa: BLE001 - read again below
                pass
        after = chain["after"]
        while n + len(named) < last:
            if named:
                after = named[-1][-1] if named[-1] else after
            # holders after users no record has had moved yet: nobody moves them before it is committed
            named.append(self.directory.holders_after(batch["tenant_id"], batch["source_subscription_id"], after,
                                                      chain["size"]))
        return named[0], named[1:]

    def _migrate(self, batch: dict[str, Any]):
        try:
            return self.directory.migrate(batch["tenant_id"], batch["upgrade_id"], batch["user_ids"],
                                          batch["source_subscription_id"], batch["target_subscription_id"],
                                          batch["target_sku"])
        except Exception as exc:  # handed to on_batch, which raises it there (and the runtime retries)
            return exc

    def _result(self, batch: dict[str, Any]):
        if batch.get("chain") and self._pool is not None:
            result = self._chained_result(batch)
        else:
            started = self._started.pop(_key(batch), None)
            result = started.result() if started is not None else None
        if result is None:
            result = self._migrate(batch)
        if isinstance(result, Exception):
            raise result
        return result

    def on_batch(self, ctx: Context, batch: dict[str, Any]) -> None:
        upgrade_id, batch_no = batch["upgrade_id"], batch["batch_no"]
        done_key = f"done:{upgrade_id}:{batch_no}"
        if ctx.get(done_key):
            log.info("batch already completed; replay ignored", batch_no=batch_no)
            return
        result = self._result(batch)
        if result.users_missing:
            log.warning("users no longer hold the source licence", users_missing=result.users_missing)
        ctx.publish(batch_completed(
            batch, "completed", ctx.now(), users_migrated=result.users_migrated,
            users_already_migrated=result.users_already_migrated, users_missing=result.users_missing,
            service_plan_resets=[{"user_id": u, "disabled_services": list(d)} for u, d in result.resets]),
            key=upgrade_id)
        if batch.get("chain") and batch["batch_no"] + 1 < batch["batch_count"]:
            # a chain (a licence API's quota): this batch releases the next, on its own
            # partition: to this worker, which is moving it already
            following = next_in_chain(batch, *self._next_users(batch))
            partition = ctx.partition
            ctx.emit(Topic.LICENSE_BATCHES, batch_key(upgrade_id, following["batch_no"]), following,
                     placement=lambda partitions: partition % partitions)
        elif batch.get("chain"):
            self._chains.pop(upgrade_id, None)  # its last batch
        # Replayable for as long as its record can still be read; not after.
        expires_ms = max(ctx.timestamp, int(ctx.clock() * 1000)) + lifetime_ms(Topic.LICENSE_BATCHES)
        ctx.put(done_key, True, expires_at=datetime.fromtimestamp(expires_ms / 1000, timezone.utc))

    def on_failed_batch(self, ctx: Context, batch: dict[str, Any], error: BaseException) -> None:
        """The batch is being dead-lettered: the upgrade cannot complete; tell settlement."""
        upgrade_id, batch_no = batch["upgrade_id"], batch["batch_no"]
        detail = f"Batch {batch_no} of {batch['batch_count']}: {type(error).__name__}: {error}"
        ctx.publish(batch_completed(batch, "failed", ctx.now(), error=detail[:2000]), key=upgrade_id)


def _key(batch: dict[str, Any]) -> tuple[str, int]:
    return batch["upgrade_id"], batch["batch_no"]


def processor(settings: Settings, instance: str = "0", directory: LicenceDirectory | None = None,
              clock: Callable[[], float] = time.time, **config: Any) -> StreamProcessor:
    return StreamProcessor(settings, migration_config(settings, directory, instance, **config), clock)


def migration_config(settings: Settings, directory: LicenceDirectory | None = None, instance: str = "0",
                     **config: Any) -> ProcessorConfig:
    migration = Migration(directory or open_directory(settings))
    config.setdefault("max_attempts", 5)
    # A batch is real work (up to PLANSHIFT_BATCH_SIZE users, each a call to the directory):
    # poll a few at a time, so that a slow directory never keeps the consumer from polling
    # for longer than max.poll.interval.ms (300 s), which would cost it its partitions.
    config.setdefault("max_poll_records", 50)
    config.setdefault("retry_backoff_s", 0.2)
    return ProcessorConfig(
        group_id=GROUP_ID,
        sources=(Source(Topic.LICENSE_BATCHES, migration.on_batch, on_failure=migration.on_failed_batch,
                        prepare=migration.prepare, ready=migration.ready if migration.side_by_side else None),),
        instance=instance,
        **config,
    )
