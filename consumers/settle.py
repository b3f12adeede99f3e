"""Settlement (`planshift run settle`): the money, once, when the last batch is in.

A stateful consumer of `license.batch.completed`, keyed by upgrade_id, so all of an
upgrade's completions (and a batch's failure) meet in one partition's store. Its
decisions are pure (`planshift.domain.settlement`): it counts completed batches (a
bitmap, so a repeated completion is ignored), reports progress as `migrating` statuses
at every tenth of the batches (at most ten per upgrade), and once the upgrade is final
takes nothing in any more. Settlement is the one writer of an upgrade's statuses after
intake's first `migrating`, so they reach `upgrade.status` in order.

When the last batch is in, the users who took a source licence after the batches were
planned are moved too (the directory's `sweep`, CONTRACT.md §4 r2: nobody is left on
the plan the switch cancels), and then, in one transaction:

  billing.switch  (event_id {upgrade_id}:billing-switch, effective_date = the UTC day
                   the last batch completed)
  credit.issued   (event_id {upgrade_id}:credit, only when above zero)
  upgrade.status  completed, with credit, forfeit and the number of users whose
                  per-service settings were reset
  upgrade.ended   (intake frees the tenant)

and the upgrade's reset report (Parquet) is written, when anyone's settings were reset.

A final upgrade's state (`{status, tenant_id}`: enough to ignore whatever comes after)
is kept for as long as a completion of it could still arrive (`FINAL_KEPT`): a batch
dead-lettered and re-driven on the last day of its dead-letter topic's retention, then
read from `license.batches`, then its completion read from `license.batch.completed`,
each up to its topic's retention and one segment later. Then it expires, so settlement
that runs for months holds only the upgrades of those weeks. Everything it needs is carried on
the completions (`terms`), so replaying them rebuilds the same events with the same ids.

A batch that failed for good (the migration workers say so on `license.batch.completed`)
fails the upgrade: `failed` with `MIGRATION_FAILED`, and `upgrade.ended`. If settling
itself fails every attempt, the upgrade is never left `migrating` with its tenant
locked: it ends `failed` with `SETTLEMENT_FAILED`, which the runbook tells an operator
how to finish (docs/RUNBOOK.md).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Callable

from planshift.contract import (
    Status,
    Topic,
    billing_switch_id,
    credit_id,
    dlq,
    lifetime_ms,
)
from planshift.domain.eligibility import reason
from planshift.domain.lifecycle import ADMIN_LOCK, is_final
from planshift.domain.settlement import Migration, Next, progress, settle, take
from planshift.errors import PermanentError
from planshift.events import event, rfc3339, upgrade_ended, upgrade_status
from planshift.logs import get_logger
from planshift.runtime import Context, ProcessorConfig, Source, StreamProcessor
from planshift.settings import Settings
from planshift.storage.directory import LicenceDirectory, SettlingRead, open_directory, settling_read
from planshift.storage.reports import write_reset_report

log = get_logger(__name__)

GROUP_ID = "planshift-settle"

# How long a final upgrade's state is kept (about 65 days with the contract's retentions).
FINAL_KEPT = timedelta(milliseconds=lifetime_ms(dlq(Topic.LICENSE_BATCHES)) + lifetime_ms(Topic.LICENSE_BATCHES)
                       + lifetime_ms(Topic.LICENSE_BATCH_COMPLETED))


class Settlement:
    def __init__(self, settings: Settings, directory: LicenceDirectory):
        self.settings = settings
        self.directory = directory
        # Over a licence API every read is a round trip: a poll's completions read what
        # settling needs side by side first (`prepare`), rather than three calls in a row each.
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="settle-read") \
            if getattr(directory, "concurrent", False) else None
        self._read: dict[str, Future] = {}

    def prepare(self, completions: list[dict[str, Any]]) -> None:
        """Read what settling each upgrade of the poll would need: whether any user still
        holds a source licence, the users swept before, the resets recorded. One round trip
        for the poll where the directory offers it (`settling_reads`), else side by side.
        Reads only: an upgrade that is not settled in this poll just does not use them."""
        if self._pool is None:
            return
        self._read = {}
        wanted = {done["upgrade_id"]: (done["upgrade_id"], done["tenant_id"], done["source_subscription_id"])
                  for done in completions if done.get("outcome") == "completed"}
        if not wanted:
            return
        if hasattr(self.directory, "settling_reads"):
            together = self._pool.submit(self.directory.settling_reads, list(wanted.values()))
            for u in wanted:
                self._read[u] = together
            return
        for u, t, source in wanted.values():
            self._read[u] = self._pool.submit(settling_read, self.directory, u, t, source)

    def _prefetched(self, upgrade_id: str) -> SettlingRead | None:
        read = self._read.pop(upgrade_id, None)
        try:
            found = read.result() if read is not None else None
        except Exception:  # read again, one call at a time, where it is needed
            return None
        return found.get(upgrade_id) if isinstance(found, dict) else found

    def on_completion(self, ctx: Context, done: dict[str, Any]) -> None:
        upgrade_id = done["upgrade_id"]
        key = f"upgrade:{upgrade_id}"
        before = Migration.from_state(ctx.get(key))
        if before.tenant_id is not None and before.tenant_id != done["tenant_id"]:
            raise PermanentError(f"upgrade {upgrade_id} belongs to another tenant; this completion of "
                                 f"{done['tenant_id']} is not merged with it")
        migration, next_step = take(before, done)
        if next_step is Next.IGNORE:
            log.info("completion ignored", batch_no=done["batch_no"], status=migration.status)
            return
        if next_step is Next.FAIL:
            self._fail(ctx, done, "MIGRATION_FAILED", done.get("error") or "a batch failed")
        elif next_step is Next.SETTLE:
            migration = self._settle(ctx, done, migration)
        elif next_step is Next.REPORT_PROGRESS:
            self._status(ctx, done, Status.MIGRATING, step=migration.step,
                         admin_locked_until=_plus(done["terms"]["migration_started_at"], ADMIN_LOCK),
                         progress=progress(migration, done["batch_count"], done["terms"]["users_total"]))
        self._keep(ctx, key, migration)

    def on_failure(self, ctx: Context, done: dict[str, Any], error: BaseException) -> None:
        """Settling this upgrade failed every attempt: it ends `failed`, its tenant is freed."""
        key = f"upgrade:{done['upgrade_id']}"
        migration = Migration.from_state(ctx.get(key))
        if migration.status != Status.MIGRATING or (migration.tenant_id not in (None, done["tenant_id"])):
            return
        self._fail(ctx, done, "SETTLEMENT_FAILED", f"{type(error).__name__}: {error}")
        self._keep(ctx, key, Migration(status=Status.FAILED, tenant_id=done["tenant_id"]))

    @staticmethod
    def _keep(ctx: Context, key: str, migration: Migration) -> None:
        final = is_final(migration.status)
        ctx.put(key, migration.as_state(), expires_at=ctx.now() + FINAL_KEPT if final else None)

    # -- steps ----------------------------------------------------------------------
    def _status(self, ctx: Context, done: dict[str, Any], status: str, step: int | None = None,
                **fields: Any) -> None:
        tenant_id, upgrade_id = done["tenant_id"], done["upgrade_id"]
        ctx.publish(upgrade_status(tenant_id, upgrade_id, status, step=step, occurred_at=ctx.now(), **fields))

    def _fail(self, ctx: Context, done: dict[str, Any], code: str, detail: str) -> None:
        self._status(ctx, done, Status.FAILED, reasons=[reason(code, detail[:500]).as_dict()],
                     admin_locked_until=None)
        ctx.publish(upgrade_ended(done["tenant_id"], done["upgrade_id"], Status.FAILED))
        log.error("upgrade failed", code=code, detail=detail[:500])

    def _settle(self, ctx: Context, done: dict[str, Any], migration: Migration) -> Migration:
        terms, upgrade_id, tenant_id = done["terms"], done["upgrade_id"], done["tenant_id"]
        # Users who took a source licence after the batches were planned move now; the
        # directory remembers them, so a redo counts them again.
        read = self._prefetched(upgrade_id)
        late = read is None or read.late
        if late:
            self.directory.sweep(tenant_id, upgrade_id, done["source_subscription_id"],
                                 done["target_subscription_id"], done["target_sku"])
        swept = self.directory.swept(upgrade_id) if late else read.swept
        if swept:
            log.warning("users who took a source licence during the upgrade were moved", users_swept=swept)
        migration = Migration(status=Status.COMPLETED, tenant_id=tenant_id, done=migration.done,
                              batches_done=migration.batches_done, users_done=migration.users_done + swept)
        settled = settle(terms, done)
        credit = settled.credit
        ctx.publish(event(
            Topic.BILLING_SWITCH, tenant_id, billing_switch_id(upgrade_id), occurred_at=ctx.now(),
            upgrade_id=upgrade_id,
            old_subscription_id=done["source_subscription_id"], old_sku=done["source_sku"],
            new_subscription_id=done["target_subscription_id"], new_sku=done["target_sku"],
            licenses=terms["licenses"], effective_date=settled.effective_date.isoformat(),
            billing_frequency=terms["billing_frequency"], currency=terms["currency"],
            new_total_cost_minor=terms["new_total_cost_minor"]))
        if credit.amount_minor > 0:
            ctx.publish(event(
                Topic.CREDIT_ISSUED, tenant_id, credit_id(upgrade_id), occurred_at=ctx.now(),
                credit_id=credit_id(upgrade_id),
                upgrade_id=upgrade_id, subscription_id=done["source_subscription_id"], currency=terms["currency"],
                amount_minor=credit.amount_minor, basis=credit.basis, unused_days=credit.unused_days,
                period_days=credit.period_days, period_start=credit.period_start.isoformat(),
                period_end=credit.period_end.isoformat(), forfeit_minor=credit.forfeit_minor,
                due_by=settled.credit_due_by.isoformat()))
        resets = self.directory.resets(upgrade_id) if late else read.resets  # every batch's and the sweep's
        self._status(ctx, done, Status.COMPLETED, admin_locked_until=None,
                     progress=progress(migration, done["batch_count"], terms["users_total"] + swept),
                     new_subscription_id=done["target_subscription_id"], credit_minor=credit.amount_minor,
                     forfeit_minor=credit.forfeit_minor, currency=terms["currency"],
                     service_plan_resets=len(resets))
        ctx.publish(upgrade_ended(tenant_id, upgrade_id, Status.COMPLETED))
        # A file beside the transaction, for an upgrade that reset anyone's settings:
        # rewritten whole and identically if this is redone. Most upgrades reset nobody's,
        # and a file for each of them would cost settlement more than the rest of settling.
        path = write_reset_report(self.settings, upgrade_id, resets) if resets else None
        log.info("upgrade settled", credit_minor=credit.amount_minor,
                 effective_date=settled.effective_date.isoformat(), reset_report=path and str(path))
        return migration


def _plus(moment: str, delta: timedelta) -> str:
    return rfc3339(datetime.fromisoformat(moment.replace("Z", "+00:00")) + delta)


def processor(settings: Settings, instance: str = "0", directory: LicenceDirectory | None = None,
              clock: Callable[[], float] = time.time, **config: Any) -> StreamProcessor:
    return StreamProcessor(settings, settlement_config(settings, directory, instance, **config), clock)


def settlement_config(settings: Settings, directory: LicenceDirectory | None = None, instance: str = "0",
                      **config: Any) -> ProcessorConfig:
    settlement = Settlement(settings, directory or open_directory(settings))
    # Settling reads and writes the directory (the late users' sweep): ride out a short
    # outage of it before giving the upgrade up as SETTLEMENT_FAILED.
    config.setdefault("max_attempts", 5)
    config.setdefault("retry_backoff_s", 0.2)
    return ProcessorConfig(
        group_id=GROUP_ID,
        sources=(Source(Topic.LICENSE_BATCH_COMPLETED, settlement.on_completion, on_failure=settlement.on_failure,
                        prepare=settlement.prepare),),
        instance=instance,
        **config,
    )
