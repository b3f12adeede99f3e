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
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable

from planshift.contract import Topic, batch_key, lifetime_ms
from planshift.domain.batches import next_in_chain
from planshift.events import batch_completed
from planshift.logs import get_logger
from planshift.runtime import Context, ProcessorConfig, Source, StreamProcessor
from planshift.settings import Settings
from planshift.storage.directory import LicenceDirectory, open_directory

log = get_logger(__name__)


@dataclasses.dataclass
class _Ahead:
    """A chain's next batch, moved ahead by the worker that moves its predecessor: its users
    (the next holders after the predecessor's) and, once moved, the directory's result."""
    users: Future
    moved: Future


GROUP_ID = "planshift-migrate"


class Migration:
    def __init__(self, directory: LicenceDirectory):
        self.directory = directory
        # A licence API answers several callers at once, and throttles each tenant on its own:
        # a poll's batches of different tenants are migrated side by side (each tenant's in
        # order), so one tenant waiting on its quota holds up nobody else's.
        self._side_by_side = getattr(directory, "concurrent", False)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="tenant") if self._side_by_side else None
        self._started: dict[tuple[str, int], Future] = {}
        # Under a quota a tenant's batches are a chain: this worker moves the next batch's users
        # while the batch before commits and its successor record comes round (placed on the
        # same partition, so normally to this worker), keeping the tenant at its quota.
        self._ahead: dict[tuple[str, int], _Ahead] = {}

    def prepare(self, batches: list[dict[str, Any]]) -> None:
        """Start the poll's batches, tenant by tenant in parallel (a licence API only)."""
        if self._pool is None:
            return
        self._started = {}
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        for batch in batches:
            by_tenant.setdefault(batch["tenant_id"], []).append(batch)
        for tenant_batches in by_tenant.values():
            items = {(b["upgrade_id"], b["batch_no"]): Future() for b in tenant_batches}
            self._started.update(items)
            self._pool.submit(self._run_tenant, tenant_batches, items)

    def _run_tenant(self, batches: list[dict[str, Any]], items: dict[tuple[str, int], Future]) -> None:
        result = None
        for batch in batches:
            result = self._moved_ahead(batch)
            if result is None:
                result = self._migrate(batch)
            items[(batch["upgrade_id"], batch["batch_no"])].set_result(result)
        if not isinstance(result, Exception):
            self._move_ahead(batches[-1])

    def _move_ahead(self, batch: dict[str, Any]) -> None:
        chain = batch.get("chain")
        if not chain or batch["batch_no"] + 1 >= batch["batch_count"]:
            return
        if len(self._ahead) > 10_000:  # successors that went to other workers (a rebalance)
            self._ahead.clear()
        ahead = self._ahead[(batch["upgrade_id"], batch["batch_no"] + 1)] = _Ahead(Future(), Future())
        try:
            users = self.directory.holders_after(batch["tenant_id"], batch["source_subscription_id"], chain["after"],
                                                 chain["size"])
        except Exception:
            ahead.users.set_result(None)  # on_batch reads them itself
            ahead.moved.set_result(None)
            return
        ahead.users.set_result(users)
        ahead.moved.set_result(self._migrate({**batch, "user_ids": users}) if users else None)

    def _moved_ahead(self, batch: dict[str, Any]):
        """The directory's result for `batch` if this worker moved it ahead, else None."""
        ahead = self._ahead.pop((batch["upgrade_id"], batch["batch_no"]), None)
        if ahead is None or ahead.users.result() != batch["user_ids"]:
            return None
        moved = ahead.moved.result()
        return None if moved is None or isinstance(moved, Exception) else moved

    def _migrate(self, batch: dict[str, Any]):
        try:
            return self.directory.migrate(batch["tenant_id"], batch["upgrade_id"], batch["user_ids"],
                                          batch["source_subscription_id"], batch["target_subscription_id"],
                                          batch["target_sku"])
        except Exception as exc:  # handed to on_batch, which raises it there (and the runtime retries)
            return exc

    def _result(self, batch: dict[str, Any]):
        started = self._started.pop((batch["upgrade_id"], batch["batch_no"]), None)
        result = started.result() if started is not None else self._migrate(batch)
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
        following = next_in_chain(batch, self._next_users(batch))
        if following is not None:  # a chain (a licence API's quota): this batch releases the next,
            partition = ctx.partition  # on its own partition: to this worker, which moves it ahead
            ctx.emit(Topic.LICENSE_BATCHES, batch_key(upgrade_id, following["batch_no"]), following,
                     placement=lambda partitions: partition % partitions)
        # Replayable for as long as its record can still be read; not after.
        expires_ms = max(ctx.timestamp, int(ctx.clock() * 1000)) + lifetime_ms(Topic.LICENSE_BATCHES)
        ctx.put(done_key, True, expires_at=datetime.fromtimestamp(expires_ms / 1000, timezone.utc))

    def _next_users(self, batch: dict[str, Any]) -> list[str]:
        chain = batch.get("chain")
        if not chain or batch["batch_no"] + 1 >= batch["batch_count"]:
            return []
        ahead = self._ahead.get((batch["upgrade_id"], batch["batch_no"] + 1))
        if ahead is not None and ahead.users.result() is not None:
            return ahead.users.result()  # the users this worker is moving ahead
        return self.directory.holders_after(batch["tenant_id"], batch["source_subscription_id"], chain["after"],
                                            chain["size"])

    def on_failed_batch(self, ctx: Context, batch: dict[str, Any], error: BaseException) -> None:
        """The batch is being dead-lettered: the upgrade cannot complete; tell settlement."""
        upgrade_id, batch_no = batch["upgrade_id"], batch["batch_no"]
        detail = f"Batch {batch_no} of {batch['batch_count']}: {type(error).__name__}: {error}"
        ctx.publish(batch_completed(batch, "failed", ctx.now(), error=detail[:2000]), key=upgrade_id)


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
                        prepare=migration.prepare),),
        instance=instance,
        **config,
    )
