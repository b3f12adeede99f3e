"""Migration workers (`planshift run migrate --instances N`): "many users take longer".

A consumer group over `license.batches` (12 partitions by default); each record is one
batch of at most `PLANSHIFT_BATCH_SIZE` users of one upgrade. For each batch, in one
directory transaction, every user gets the target licence with all services enabled
before losing the source licence, and what they had switched off is recorded; then
`license.batch.completed` goes out in the runtime's Kafka transaction.

Each completed batch is remembered in the worker's state store (changelog-backed, in
the same transaction as the completion), so a replay of `license.batches` emits no
second completion. The directory is outside Kafka's transaction, though, so a batch can
be applied and then, after a crash, handled again. That is why the directory's migration is idempotent: a repeat
finds its users already migrated, reports them so, and returns the same recorded resets,
and the completion that is finally committed counts every user once either way.

A directory error is retried (the runtime's attempts, with back-off); a batch that keeps
failing is dead-lettered and its upgrade marked `failed` with `MIGRATION_FAILED`, never
left hanging. Settlement then never sees all batches complete, and intake frees the tenant.
"""

from __future__ import annotations

from typing import Any

from planshift.contract import Status, Topic, status_id
from planshift.directory import LicenceDirectory, SqliteDirectory
from planshift.domain.eligibility import reason
from planshift.events import event, upgrade_ended
from planshift.logs import get_logger
from planshift.runtime import Context, ProcessorConfig, Source, StreamProcessor
from planshift.settings import Settings

log = get_logger(__name__)

GROUP_ID = "planshift-migrate"


class Migration:
    def __init__(self, directory: LicenceDirectory):
        self.directory = directory

    def on_batch(self, ctx: Context, batch: dict[str, Any]) -> None:
        upgrade_id, batch_no = batch["upgrade_id"], batch["batch_no"]
        done_key = f"done:{upgrade_id}:{batch_no}"
        if ctx.get(done_key):
            log.info("batch already completed; replay ignored", batch_no=batch_no)
            return
        result = self.directory.migrate(batch["tenant_id"], upgrade_id, batch["user_ids"],
                                        batch["source_subscription_id"], batch["target_subscription_id"],
                                        batch["target_sku"])
        if result.users_missing:
            log.warning("users no longer hold the source licence", users_missing=result.users_missing)
        ctx.emit(Topic.LICENSE_BATCH_COMPLETED, upgrade_id, event(
            Topic.LICENSE_BATCH_COMPLETED, batch["tenant_id"], f"{upgrade_id}:batch-completed:{batch_no}",
            upgrade_id=upgrade_id, batch_no=batch_no, batch_count=batch["batch_count"],
            users_migrated=result.users_migrated, users_already_migrated=result.users_already_migrated,
            users_missing=result.users_missing,
            service_plan_resets=[{"user_id": u, "disabled_services": list(d)} for u, d in result.resets],
            source_subscription_id=batch["source_subscription_id"], source_sku=batch["source_sku"],
            target_subscription_id=batch["target_subscription_id"], target_sku=batch["target_sku"],
            terms=batch["terms"]))
        ctx.put(done_key, True)

    def on_failed_batch(self, ctx: Context, batch: dict[str, Any], error: BaseException) -> None:
        """The batch is being dead-lettered: the upgrade cannot complete; say so."""
        tenant_id, upgrade_id = batch["tenant_id"], batch["upgrade_id"]
        detail = f"Batch {batch['batch_no']} of {batch['batch_count']}: {type(error).__name__}: {error}"
        ctx.emit(Topic.UPGRADE_STATUS, tenant_id, event(
            Topic.UPGRADE_STATUS, tenant_id, status_id(upgrade_id, Status.FAILED), upgrade_id=upgrade_id,
            status=Status.FAILED, reasons=[reason("MIGRATION_FAILED", detail[:500]).as_dict()],
            admin_locked_until=None))
        ctx.emit(Topic.UPGRADE_ENDED, tenant_id, upgrade_ended(tenant_id, upgrade_id, Status.FAILED))


def processor(settings: Settings, instance: str = "0", directory: LicenceDirectory | None = None,
              **config: Any) -> StreamProcessor:
    migration = Migration(directory or SqliteDirectory.for_settings(settings))
    config.setdefault("max_attempts", 5)
    # A batch is real work (up to PLANSHIFT_BATCH_SIZE users, each a call to the directory):
    # poll a few at a time, so that a slow directory never keeps the consumer from polling
    # for longer than max.poll.interval.ms (300 s), which would cost it its partitions.
    config.setdefault("max_poll_records", 50)
    config.setdefault("retry_backoff_s", 0.2)
    return StreamProcessor(settings, ProcessorConfig(
        group_id=GROUP_ID,
        sources=(Source(Topic.LICENSE_BATCHES, migration.on_batch, on_failure=migration.on_failed_batch),),
        instance=instance,
        **config,
    ))
