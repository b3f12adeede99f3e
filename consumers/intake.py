"""Intake (`planshift run intake`): where an upgrade request enters.

Reads `upgrade.requested`, `credit.check.decided` and `upgrade.status` (all keyed by
tenant_id and co-partitioned, so a tenant's state lives in one partition's store) and
the `service.health` table. For each request:

  validate → repeated upgrade_id? ignore → eligibility (every rule, in order)
    → rejected, or accepted → [credit check: credit_check_pending … decided]
    → batches on `license.batches` and `migrating`.

The tenant's lock is taken on acceptance and released when `upgrade.status` says the
upgrade is completed or failed (settlement and the migration workers say so), or when
intake itself rejects it after a declined credit check.

State, per partition store:
  upgrade:{upgrade_id} → {"status", "tenant_id", and while a credit check is pending "request"}
  tenant:{tenant_id}   → {"upgrade_id"} while an upgrade of the tenant is in flight
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Mapping

from planshift.catalogue import Catalogue
from planshift.contract import TERMINAL_STATUSES, Status, Topic, batch_key
from planshift.directory import LicenceDirectory, SqliteDirectory
from planshift.domain.batches import batch_events
from planshift.domain.credit_check import add_business_days, credit_check_reason
from planshift.domain.eligibility import TenantView, evaluate, reason, request_date, source_subscription
from planshift.events import event, rfc3339, utc_now
from planshift.logs import get_logger
from planshift.runtime import Context, ProcessorConfig, Source, StreamProcessor
from planshift.schema import InvalidEvent
from planshift.settings import Settings

log = get_logger(__name__)

GROUP_ID = "planshift-intake"
ADMIN_LOCK = timedelta(hours=1)


def status_event(tenant_id: str, upgrade_id: str, status: str, *, reasons: list[dict] | None = None,
                 event_id: str | None = None, **fields: Any) -> dict[str, Any]:
    return event(Topic.UPGRADE_STATUS, tenant_id, event_id or f"{upgrade_id}:status:{status}",
                 upgrade_id=upgrade_id, status=status, reasons=reasons or [], **fields)


class Intake:
    """The handlers; `processor()` wires them to the runtime."""

    def __init__(self, settings: Settings, directory: LicenceDirectory, catalogue: Catalogue):
        self.settings = settings
        self.directory = directory
        self.catalogue = catalogue

    # -- upgrade.requested ------------------------------------------------------
    def on_request(self, ctx: Context, request: dict[str, Any]) -> None:
        upgrade_id, tenant_id = request["upgrade_id"], request["tenant_id"]
        if ctx.get(f"upgrade:{upgrade_id}") is not None:
            log.info("repeated upgrade_id ignored")
            return
        lock = ctx.get(f"tenant:{tenant_id}")
        holders = self.directory.count_holders(tenant_id, request["source_subscription_id"])
        health = {name: row["status"] for name, row in ctx.tables.get(Topic.SERVICE_HEALTH, {}).items()}
        reasons = evaluate(request, TenantView(holders, health, lock["upgrade_id"] if lock else None,
                                               self.settings.prepaid_policy), self.catalogue)
        if reasons:
            self._reject(ctx, tenant_id, upgrade_id, [r.as_dict() for r in reasons])
            return
        ctx.emit(Topic.UPGRADE_STATUS, tenant_id, status_event(tenant_id, upgrade_id, Status.ACCEPTED))
        ctx.put(f"tenant:{tenant_id}", {"upgrade_id": upgrade_id})
        check = credit_check_reason(request, self.settings.credit_check_threshold_minor)
        if check is None:
            self._start_migration(ctx, request)
            return
        ctx.emit(Topic.CREDIT_CHECK_REQUESTED, tenant_id, event(
            Topic.CREDIT_CHECK_REQUESTED, tenant_id, f"{upgrade_id}:credit-check",
            upgrade_id=upgrade_id, reason=check, amount_minor=request["new_total_cost_minor"],
            currency=request["currency"], due_by=add_business_days(request_date(request), 2).isoformat()))
        ctx.emit(Topic.UPGRADE_STATUS, tenant_id, status_event(tenant_id, upgrade_id, Status.CREDIT_CHECK_PENDING))
        ctx.put(f"upgrade:{upgrade_id}", {"status": Status.CREDIT_CHECK_PENDING, "tenant_id": tenant_id,
                                          "request": request})

    def on_invalid_request(self, ctx: Context, raw: bytes | None, error: InvalidEvent) -> None:
        """Tell the sender when the record says who it is; the runtime dead-letters it."""
        try:
            value = json.loads(raw) if raw is not None else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if not isinstance(value, dict):
            return
        upgrade_id, tenant_id = value.get("upgrade_id"), value.get("tenant_id")
        if not (isinstance(upgrade_id, str) and upgrade_id and isinstance(tenant_id, str) and tenant_id):
            return
        if ctx.get(f"upgrade:{upgrade_id}") is not None:
            return  # that upgrade exists: its statuses only move forward
        detail = "; ".join(map(str, error.violations))
        self._reject(ctx, tenant_id, upgrade_id, [reason("INVALID_REQUEST", detail).as_dict()])

    # -- credit.check.decided ------------------------------------------------------
    def on_credit_decision(self, ctx: Context, decision: dict[str, Any]) -> None:
        upgrade_id = decision["upgrade_id"]
        state = ctx.get(f"upgrade:{upgrade_id}")
        if state is None or state["status"] != Status.CREDIT_CHECK_PENDING:
            log.info("credit decision for no pending check ignored",
                     known=state is not None, status=state and state["status"])
            return
        request = state["request"]
        if decision["approved"]:
            self._start_migration(ctx, request)
        else:
            tenant_id = request["tenant_id"]
            self._reject(ctx, tenant_id, upgrade_id, [reason("CREDIT_CHECK_DECLINED").as_dict()])
            self._release(ctx, tenant_id, upgrade_id)

    # -- upgrade.status -------------------------------------------------------------
    def on_status(self, ctx: Context, status: dict[str, Any]) -> None:
        """Completed or failed (from settlement or migration) ends the upgrade: release the tenant."""
        if status["status"] not in (Status.COMPLETED, Status.FAILED):
            return
        upgrade_id = status["upgrade_id"]
        state = ctx.get(f"upgrade:{upgrade_id}")
        if state is not None and state["status"] not in TERMINAL_STATUSES:
            ctx.put(f"upgrade:{upgrade_id}", {"status": status["status"], "tenant_id": status["tenant_id"]})
        self._release(ctx, status["tenant_id"], upgrade_id)

    # -- steps ----------------------------------------------------------------------
    def _reject(self, ctx: Context, tenant_id: str, upgrade_id: str, reasons: list[dict]) -> None:
        ctx.emit(Topic.UPGRADE_STATUS, tenant_id, status_event(tenant_id, upgrade_id, Status.REJECTED, reasons=reasons))
        ctx.put(f"upgrade:{upgrade_id}", {"status": Status.REJECTED, "tenant_id": tenant_id})

    def _release(self, ctx: Context, tenant_id: str, upgrade_id: str) -> None:
        lock = ctx.get(f"tenant:{tenant_id}")
        if lock and lock["upgrade_id"] == upgrade_id:
            ctx.delete(f"tenant:{tenant_id}")

    def _start_migration(self, ctx: Context, request: Mapping[str, Any]) -> None:
        tenant_id, upgrade_id = request["tenant_id"], request["upgrade_id"]
        source = source_subscription(request)
        users = self.directory.holders(tenant_id, request["source_subscription_id"])
        now = utc_now()
        batch_count = 0
        for batch in batch_events(request, source["sku"], users, self.settings.batch_size, rfc3339(now)):
            ctx.emit(Topic.LICENSE_BATCHES, batch_key(upgrade_id, batch["batch_no"]), batch)
            batch_count = batch["batch_count"]
        ctx.emit(Topic.UPGRADE_STATUS, tenant_id, status_event(
            tenant_id, upgrade_id, Status.MIGRATING, event_id=f"{upgrade_id}:status:migrating:0",
            progress={"batches_done": 0, "batch_count": batch_count, "users_done": 0, "users_total": len(users)},
            admin_locked_until=rfc3339(now + ADMIN_LOCK)))
        ctx.put(f"upgrade:{upgrade_id}", {"status": Status.MIGRATING, "tenant_id": tenant_id,
                                          "batch_count": batch_count, "users_total": len(users)})


def processor(settings: Settings, instance: str = "0", directory: LicenceDirectory | None = None,
              catalogue: Catalogue | None = None, **config: Any) -> StreamProcessor:
    intake = Intake(settings, directory or SqliteDirectory.for_settings(settings),
                    catalogue or Catalogue.for_settings(settings))
    return StreamProcessor(settings, ProcessorConfig(
        group_id=GROUP_ID,
        sources=(
            Source(Topic.UPGRADE_REQUESTED, intake.on_request, on_invalid=intake.on_invalid_request),
            Source(Topic.CREDIT_CHECK_DECIDED, intake.on_credit_decision),
            Source(Topic.UPGRADE_STATUS, intake.on_status),
        ),
        tables=(Topic.SERVICE_HEALTH,),
        instance=instance,
        **config,
    ))
