"""Settlement (`planshift run settle`): the money, once, when the last batch is in.

A stateful consumer of `license.batch.completed`, keyed by upgrade_id, so all of an
upgrade's completions meet in one partition's store. It counts completed batches (a
bitmap, so a repeated completion is recognised and ignored), reports progress as
`migrating` statuses at every tenth of the batches (rate-limited for big tenants: at
most ten per upgrade), and when the last batch is in emits in one transaction:

  billing.switch  (event_id {upgrade_id}:billing-switch, effective_date = the UTC day
                   the last batch completed)
  credit.issued   (event_id {upgrade_id}:credit, only when above zero)
  upgrade.status  completed, with credit, forfeit and the number of users whose
                  per-service settings were reset

and writes the upgrade's reset report (Parquet). Everything it needs is carried on the
completions (`terms`), so replaying them rebuilds the same events with the same ids.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from planshift.contract import Status, Topic, billing_switch_id, credit_id, status_id
from planshift.directory import LicenceDirectory, SqliteDirectory
from planshift.domain.money import subscription_credit
from planshift.events import event, upgrade_ended
from planshift.logs import get_logger
from planshift.reports import write_reset_report
from planshift.runtime import Context, ProcessorConfig, Source, StreamProcessor
from planshift.settings import Settings

log = get_logger(__name__)

GROUP_ID = "planshift-settle"
CREDIT_DUE_DAYS = 30
PROGRESS_STEPS = 10


class Settlement:
    def __init__(self, settings: Settings, directory: LicenceDirectory):
        self.settings = settings
        self.directory = directory

    def on_completion(self, ctx: Context, done: dict[str, Any]) -> None:
        upgrade_id, batch_no = done["upgrade_id"], done["batch_no"]
        key = f"upgrade:{upgrade_id}"
        state = ctx.get(key) or {"batches_done": 0, "users_done": 0, "resets": 0, "done": "0", "step": 0}
        if state.get("settled"):
            log.info("completion after settlement ignored", batch_no=batch_no)
            return
        mask = int(state["done"], 16)
        if mask >> batch_no & 1:
            log.info("repeated completion ignored", batch_no=batch_no)
            return
        state = {
            **state,
            "done": format(mask | 1 << batch_no, "x"),
            "batches_done": state["batches_done"] + 1,
            "users_done": state["users_done"] + done["users_migrated"] + done["users_already_migrated"],
            "resets": state["resets"] + len(done["service_plan_resets"]),
        }
        batch_count = done["batch_count"]
        if state["batches_done"] >= batch_count:
            self._settle(ctx, done, state)
            ctx.put(key, {"settled": True})
            return
        step = state["batches_done"] * PROGRESS_STEPS // batch_count
        if step > state["step"]:
            state["step"] = step
            self._progress(ctx, done, state, step)
        ctx.put(key, state)

    def _progress(self, ctx: Context, done: dict[str, Any], state: dict[str, Any], step: int) -> None:
        terms, upgrade_id, tenant_id = done["terms"], done["upgrade_id"], done["tenant_id"]
        locked_until = _plus_hour(terms["migration_started_at"])
        ctx.emit(Topic.UPGRADE_STATUS, tenant_id, event(
            Topic.UPGRADE_STATUS, tenant_id, status_id(upgrade_id, Status.MIGRATING, step), upgrade_id=upgrade_id,
            status=Status.MIGRATING, reasons=[], admin_locked_until=locked_until,
            progress=_progress(done, state)))

    def _settle(self, ctx: Context, done: dict[str, Any], state: dict[str, Any]) -> None:
        terms, upgrade_id, tenant_id = done["terms"], done["upgrade_id"], done["tenant_id"]
        effective = date.fromisoformat(done["occurred_at"][:10])
        credit = subscription_credit(terms, effective, terms["new_total_cost_minor"])
        ctx.emit(Topic.BILLING_SWITCH, tenant_id, event(
            Topic.BILLING_SWITCH, tenant_id, billing_switch_id(upgrade_id), upgrade_id=upgrade_id,
            old_subscription_id=done["source_subscription_id"], old_sku=done["source_sku"],
            new_subscription_id=done["target_subscription_id"], new_sku=done["target_sku"],
            licenses=terms["licenses"], effective_date=effective.isoformat(),
            billing_frequency=terms["billing_frequency"], currency=terms["currency"],
            new_total_cost_minor=terms["new_total_cost_minor"]))
        if credit.amount_minor > 0:
            ctx.emit(Topic.CREDIT_ISSUED, tenant_id, event(
                Topic.CREDIT_ISSUED, tenant_id, credit_id(upgrade_id), credit_id=credit_id(upgrade_id),
                upgrade_id=upgrade_id, subscription_id=done["source_subscription_id"], currency=terms["currency"],
                amount_minor=credit.amount_minor, basis=credit.basis, unused_days=credit.unused_days,
                period_days=credit.period_days, period_start=credit.period_start.isoformat(),
                period_end=credit.period_end.isoformat(), forfeit_minor=credit.forfeit_minor,
                due_by=(effective + timedelta(days=CREDIT_DUE_DAYS)).isoformat()))
        ctx.emit(Topic.UPGRADE_STATUS, tenant_id, event(
            Topic.UPGRADE_STATUS, tenant_id, status_id(upgrade_id, Status.COMPLETED), upgrade_id=upgrade_id,
            status=Status.COMPLETED, reasons=[], progress=_progress(done, state), admin_locked_until=None,
            new_subscription_id=done["target_subscription_id"], credit_minor=credit.amount_minor,
            forfeit_minor=credit.forfeit_minor, currency=terms["currency"], service_plan_resets=state["resets"]))
        ctx.emit(Topic.UPGRADE_ENDED, tenant_id, upgrade_ended(tenant_id, upgrade_id, Status.COMPLETED))
        # A file beside the transaction: rewritten whole and identically if this is redone.
        path = write_reset_report(self.settings, upgrade_id, self.directory.resets(upgrade_id))
        log.info("upgrade settled", credit_minor=credit.amount_minor, effective_date=effective.isoformat(),
                 reset_report=str(path))


def _progress(done: dict[str, Any], state: dict[str, Any]) -> dict[str, int]:
    return {"batches_done": state["batches_done"], "batch_count": done["batch_count"],
            "users_done": state["users_done"], "users_total": done["terms"]["users_total"]}


def _plus_hour(moment: str) -> str:
    from datetime import datetime

    from planshift.events import rfc3339

    return rfc3339(datetime.fromisoformat(moment.replace("Z", "+00:00")) + timedelta(hours=1))


def processor(settings: Settings, instance: str = "0", directory: LicenceDirectory | None = None,
              **config: Any) -> StreamProcessor:
    settlement = Settlement(settings, directory or SqliteDirectory.for_settings(settings))
    return StreamProcessor(settings, ProcessorConfig(
        group_id=GROUP_ID,
        sources=(Source(Topic.LICENSE_BATCH_COMPLETED, settlement.on_completion),),
        instance=instance,
        **config,
    ))
