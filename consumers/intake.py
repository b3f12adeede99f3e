"""Intake (`planshift run intake`): where an upgrade request enters.

Reads `upgrade.requested`, `credit.check.decided` and `upgrade.ended` (all keyed by
tenant_id and co-partitioned, so a tenant's state lives in one partition's store) and
the `service.health` table. For each request:

  validate (schema, then validity: real dates, a new target …) → repeated upgrade_id?
    ignore → upgrade_id of another tenant? dead letter → eligibility (every rule, in
    order) → rejected, or accepted → [credit check: credit_check_pending … decided, the
    rules that can change meanwhile checked again; or expired] → batches on
    `license.batches` and `migrating`.

The tenant's lock is taken on acceptance and released when the upgrade ends: settlement
writes `upgrade.ended` in the same transaction as its `completed` or `failed` status, or
intake itself rejects the upgrade (a declined, expired or re-checked credit check). Intake does not read `upgrade.status` while it runs: two of every three
statuses there are its own, and reading them back cost about a quarter of its time.

State, per partition store (every input event carries tenant_id):
  tenant:{tenant_id}  → {"in_flight": upgrade_id | null, "upgrades": {upgrade_id: status},
                         "since": when the one in flight took its status (ms; for /metrics)}
  pending:{upgrade_id} → the request, while its credit check is pending (logged)
  timer:credit-check-expiry:{upgrade_id} → when that check expires (a runtime timer, logged)

Statuses move only as `planshift.domain.lifecycle` allows: an upgrade that is final
(rejected, failed, completed) ignores a late credit decision, a replay or an expiry.
An `upgrade_id` is the order system's idempotency key; one that another tenant used
first (the directory keeps each id's owner, across every intake instance) is refused
and dead-lettered, never merged with nor dropped for the other tenant's upgrade. The
directory also keeps the event that used each id first, for good, so a request that
repeats an id after the tenant's state has let its upgrade go (below) still comes to
nothing, while the same request handled again after a crash goes on.

`tenant:` state is exactly what `upgrade.status` says, which is keyed by tenant_id and
co-partitioned with intake's inputs, so it is not logged again: at restore the runtime
folds the committed statuses into it (`fold_status`). Statuses are kept 30 days, longer
than requests (14 days), so a request that can still be replayed always finds its
upgrade id. Only the request waiting for a credit check, which no status carries, goes
to the changelog. A tenant with nothing in flight is forgotten once the statuses its
state comes from have left `upgrade.status` (retention and one segment: 37 days), so a
tenant's next request after that starts from a clean slate, exactly as after a restart.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from planshift.catalogue import Catalogue
from planshift.contract import Status, Topic, batch_key, lifetime_ms
from planshift.domain.batches import batch_events, chain_size, chained_first_batch
from planshift.domain.credit_check import add_business_days, credit_check_reason, decision_due_by
from planshift.domain.eligibility import (
    TenantView,
    evaluate,
    reason,
    recheck,
    request_date,
    source_subscription,
)
from planshift.domain.lifecycle import ADMIN_LOCK, take_status
from planshift.domain.validity import check_request, utc_moment
from planshift.errors import PermanentError
from planshift.events import credit_check_requested, rfc3339, upgrade_status
from planshift.kafka.partitioning import spread
from planshift.logs import get_logger
from planshift.runtime import Context, ProcessorConfig, Source, StreamProcessor
from planshift.runtime.state import PartitionStore
from planshift.schema import InvalidEvent
from planshift.settings import Settings
from planshift.storage.directory import Claim, LicenceDirectory, open_directory

log = get_logger(__name__)

GROUP_ID = "planshift-intake"
COMMIT_INTERVAL_MS = 1000
EXPIRY_TIMER = "credit-check-expiry:"
# A tenant's state with nothing in flight expires when the statuses it is derived from
# can no longer be read (a restart would not find them either).
STATUSES_KEPT_MS = lifetime_ms(Topic.UPGRADE_STATUS)
STATUSES_KEPT = timedelta(milliseconds=STATUSES_KEPT_MS)
# A sighting of an upgrade id is renewed once it is this old (Intake._handling_again).
RENEW_AFTER_MS = 24 * 60 * 60 * 1000


class UpgradeIdTaken(PermanentError):
    """The request's upgrade_id is another tenant's: refused, never merged with that upgrade."""


class Intake:
    """The handlers; `processor()` wires them to the runtime."""

    def __init__(self, settings: Settings, directory: LicenceDirectory, catalogue: Catalogue,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.directory = directory
        self.catalogue = catalogue
        self.clock = clock  # the runtime's (a test driver's in tests): when an id is claimed
        self._holders: dict[tuple[str, str], list[str]] = {}
        self._claims: dict[tuple[str, str], Claim] = {}
        quota = settings.licence_api_quota_per_s
        self.chain_size = chain_size(quota) if quota else None  # chained batches under a licence API's quota

    def prepare_requests(self, requests: list[dict[str, Any]]) -> None:
        """Claim the upgrade ids and read the licence holders of a whole polled batch in
        two directory round trips."""
        self._claims = self.directory.claim_upgrades(
            ((r["upgrade_id"], r["tenant_id"], r["event_id"]) for r in requests), self._now_ms())
        self._holders = self.directory.holders_many(
            (r["tenant_id"], r["source_subscription_id"]) for r in requests)

    def _users(self, tenant_id: str, subscription_id: str) -> list[str]:
        users = self._holders.pop((tenant_id, subscription_id), None)
        return users if users is not None else self.directory.holders(tenant_id, subscription_id)

    def _claim(self, request: dict[str, Any]) -> Claim:
        wanted = (request["upgrade_id"], request["tenant_id"])
        claim = self._claims.pop(wanted, None)
        if claim is None:
            claim = self.directory.claim_upgrades([(*wanted, request["event_id"])], self._now_ms())[wanted]
        return claim

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _repeats(self, claim: Claim, event_id: str) -> bool:
        """Whether a request whose upgrade_id the tenant's state does not know is a repeat
        all the same: another request of this tenant used the id first, or this very one
        was last handled longer ago than the tenant's state keeps an upgrade. (Had that
        handling committed, the state would know the id still; so the same request is
        handled again only while it would: a redo after a crash, a dead letter re-driven
        within the weeks after its last try.)"""
        if claim.first_event_id != event_id:
            return True
        return self._now_ms() - claim.last_seen_at >= STATUSES_KEPT_MS

    def _handling_again(self, claim: Claim, upgrade_id: str, tenant_id: str) -> None:
        """A request seen before is handled (again): it was last seen now. Recorded only
        when the last sighting is more than a day old: a claim made by this very batch
        (every new request's) needs no second write, and a day less of the weeks a redo
        may come in changes nothing (one directory write per request cost intake three
        quarters of its rate: bench/intake_throughput.py)."""
        now = self._now_ms()
        if now - claim.last_seen_at >= RENEW_AFTER_MS:
            self.directory.renew_claim(upgrade_id, tenant_id, now)

    def _health(self, ctx: Context) -> dict[str, str]:
        return {name: row["status"] for name, row in ctx.tables.get(Topic.SERVICE_HEALTH, {}).items()}

    # -- upgrade.requested ------------------------------------------------------
    def on_request(self, ctx: Context, request: dict[str, Any]) -> None:
        upgrade_id, tenant_id = request["upgrade_id"], request["tenant_id"]
        tenant = TenantState.load(ctx, tenant_id)
        if upgrade_id in tenant.upgrades:
            log.info("repeated upgrade_id ignored")
            return
        claim = self._claim(request)
        if claim.owner != tenant_id:
            raise UpgradeIdTaken(f"upgrade_id {upgrade_id!r} is already used by another tenant; "
                                 "each upgrade needs an id of its own")
        if self._repeats(claim, request["event_id"]):
            # Used first so long ago that the tenant's state has let it go (STATUSES_KEPT):
            # still a repeat, never a second upgrade.
            log.info("repeated upgrade_id ignored", first_event_id=claim.first_event_id)
            return
        self._handling_again(claim, upgrade_id, tenant_id)
        users = self._users(tenant_id, request["source_subscription_id"])
        reasons = evaluate(request, TenantView(len(users), self._health(ctx), tenant.in_flight,
                                               self.settings.prepaid_policy), self.catalogue)
        if reasons:
            self._reject(ctx, tenant, upgrade_id, [r.as_dict() for r in reasons])
            return
        now = ctx.now()
        stamp = rfc3339(now)  # every event of this request carries the same moment
        ctx.publish(upgrade_status(tenant_id, upgrade_id, Status.ACCEPTED, occurred_at=stamp))
        tenant.in_flight = upgrade_id
        check = credit_check_reason(request, self.settings.credit_check_threshold_minor)
        if check is None:
            self._start_migration(ctx, tenant, request, users, now, stamp)
            return
        due_by = decision_due_by(request_date(request)).isoformat()
        ctx.publish(credit_check_requested(tenant_id, upgrade_id, check, request["new_total_cost_minor"],
                                           request["currency"], due_by, stamp))
        ctx.publish(upgrade_status(tenant_id, upgrade_id, Status.CREDIT_CHECK_PENDING, occurred_at=stamp,
                                   credit_check={"reason": check, "due_by": due_by}))
        tenant.upgrades[upgrade_id] = Status.CREDIT_CHECK_PENDING
        tenant.save(ctx)
        ctx.put(f"pending:{upgrade_id}", request)
        ctx.schedule(EXPIRY_TIMER + upgrade_id, self.credit_check_expiry(request),
                     {"tenant_id": tenant_id, "upgrade_id": upgrade_id})

    def credit_check_expiry(self, request: Mapping[str, Any]) -> datetime:
        """The end (24:00 UTC) of the PLANSHIFT_CREDIT_CHECK_EXPIRY_DAYS-th business day
        after the request's day: a check still unanswered then is rejected."""
        last = add_business_days(request_date(request), self.settings.credit_check_expiry_days)
        return datetime.combine(last + timedelta(days=1), datetime.min.time(), timezone.utc)

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
        tenant = TenantState.load(ctx, tenant_id)
        if upgrade_id in tenant.upgrades:
            return  # that upgrade exists: its statuses only move forward
        # Claimed like a valid request's, so that a later request with this id is a repeat.
        event_id = value.get("event_id")
        origin = event_id if isinstance(event_id, str) else f"record:{ctx.partition}:{ctx.offset}"
        # Seen (not owned: an invalid request takes no id from a valid one), so that the
        # same id of this tenant later is a repeat.
        claim = self.directory.claim_upgrades([(upgrade_id, tenant_id, origin)], self._now_ms(),
                                              own=False)[(upgrade_id, tenant_id)]
        if self._repeats(claim, origin):
            return  # the tenant sent this id before, long enough ago for its state to let it go
        self._handling_again(claim, upgrade_id, tenant_id)
        detail = "; ".join(map(str, error.violations))
        self._reject(ctx, tenant, upgrade_id, [reason("INVALID_REQUEST", detail).as_dict()])

    # -- credit.check.decided ------------------------------------------------------
    def on_credit_decision(self, ctx: Context, decision: dict[str, Any]) -> None:
        upgrade_id = decision["upgrade_id"]
        tenant = TenantState.load(ctx, decision["tenant_id"])
        request = ctx.get(f"pending:{upgrade_id}")
        if request is None or tenant.upgrades.get(upgrade_id) != Status.CREDIT_CHECK_PENDING:
            log.info("credit decision for no pending check ignored", status=tenant.upgrades.get(upgrade_id))
            return
        ctx.delete(f"pending:{upgrade_id}")
        ctx.cancel(EXPIRY_TIMER + upgrade_id)
        if not decision["approved"]:
            self._reject(ctx, tenant, upgrade_id, [reason("CREDIT_CHECK_DECLINED").as_dict()])
            return
        # Up to two business days have passed (r2): users may have joined, a service may
        # have an incident. What can change is checked again, against what holds now.
        users = self.directory.holders(tenant.tenant_id, request["source_subscription_id"])
        changed = recheck(request, TenantView(len(users), self._health(ctx), tenant.in_flight,
                                              self.settings.prepaid_policy), self.catalogue)
        if changed:
            self._reject(ctx, tenant, upgrade_id, [r.as_dict() for r in changed])
            return
        self._start_migration(ctx, tenant, request, users)

    # -- timers -----------------------------------------------------------------------
    def on_timer(self, ctx: Context, name: str, data: dict[str, Any]) -> None:
        """A credit check unanswered for PLANSHIFT_CREDIT_CHECK_EXPIRY_DAYS business days expires."""
        if not name.startswith(EXPIRY_TIMER):
            return
        upgrade_id = data["upgrade_id"]
        tenant = TenantState.load(ctx, data["tenant_id"])
        if ctx.get(f"pending:{upgrade_id}") is None or tenant.upgrades.get(upgrade_id) != Status.CREDIT_CHECK_PENDING:
            return
        ctx.delete(f"pending:{upgrade_id}")
        days = self.settings.credit_check_expiry_days
        self._reject(ctx, tenant, upgrade_id, [reason(
            "CREDIT_CHECK_EXPIRED", f"No decision came within {days} business days.").as_dict()])

    # -- upgrade.ended ----------------------------------------------------------------
    def on_ended(self, ctx: Context, ended: dict[str, Any]) -> None:
        """Completed (settlement) or failed (migration) ends the upgrade: release the tenant."""
        tenant = TenantState.load(ctx, ended["tenant_id"])
        if tenant.apply(ended["upgrade_id"], ended["status"]):
            tenant.save(ctx)

    # -- steps ----------------------------------------------------------------------
    def _reject(self, ctx: Context, tenant: "TenantState", upgrade_id: str, reasons: list[dict]) -> None:
        ctx.publish(upgrade_status(tenant.tenant_id, upgrade_id, Status.REJECTED, reasons=reasons,
                                   occurred_at=ctx.now()))
        tenant.apply(upgrade_id, Status.REJECTED)
        tenant.save(ctx)

    def _start_migration(self, ctx: Context, tenant: "TenantState", request: Mapping[str, Any],
                         users: list[str], now: datetime | None = None, stamp: str | None = None) -> None:
        tenant_id, upgrade_id = request["tenant_id"], request["upgrade_id"]
        source = source_subscription(request)
        now = now or ctx.now()
        stamp = stamp or rfc3339(now)
        batch_count = 0
        chain = self.chain_size
        if chain and len(users) > chain:
            # under a licence API's per-tenant quota: one batch at a time (domain/batches.py)
            batches = [chained_first_batch(request, source, users, chain, stamp)]
        else:
            batches = batch_events(request, source, users, self.settings.batch_size, stamp)
        for batch in batches:
            ctx.emit(Topic.LICENSE_BATCHES, batch_key(upgrade_id, batch["batch_no"]), batch,
                     placement=functools.partial(spread, upgrade_id, batch["batch_no"]))
            batch_count = batch["batch_count"]
        ctx.publish(upgrade_status(
            tenant_id, upgrade_id, Status.MIGRATING, step=0,
            progress={"batches_done": 0, "batch_count": batch_count, "users_done": 0, "users_total": len(users)},
            admin_locked_until=rfc3339(now + ADMIN_LOCK), occurred_at=stamp))
        tenant.upgrades[upgrade_id] = Status.MIGRATING
        tenant.save(ctx)


@dataclass
class TenantState:
    tenant_id: str
    in_flight: str | None
    upgrades: dict[str, str]  # upgrade_id → its latest status
    since: int | None = None  # when the upgrade in flight took its status (ms since the epoch): /metrics
    _was: tuple = field(default=(None, None), repr=False, compare=False)

    @classmethod
    def load(cls, ctx: Context | PartitionStore, tenant_id: str) -> "TenantState":
        raw = ctx.get(f"tenant:{tenant_id}") or {}
        tenant = cls(tenant_id, raw.get("in_flight"), dict(raw.get("upgrades", {})), raw.get("since"))
        tenant._was = (tenant.in_flight, tenant.upgrades.get(tenant.in_flight))
        return tenant

    def as_dict(self) -> dict[str, Any]:
        state = {"in_flight": self.in_flight, "upgrades": self.upgrades}
        if self.in_flight is not None and self.since is not None:
            state["since"] = self.since
        return state

    def stamp(self, at_ms: int) -> None:
        """Note when the upgrade in flight took its status, if it took a new one."""
        now = (self.in_flight, self.upgrades.get(self.in_flight))
        if self.in_flight is None:
            self.since = None
        elif now != self._was or self.since is None:
            self.since = at_ms
        self._was = now

    def save(self, ctx: Context) -> None:
        self.stamp(int(ctx.now().timestamp() * 1000))
        # Derived from upgrade.status; once nothing is in flight it goes when those statuses do.
        ctx.put(f"tenant:{self.tenant_id}", self.as_dict(), logged=False,
                expires_at=None if self.in_flight else ctx.now() + STATUSES_KEPT)

    def apply(self, upgrade_id: str, status: str) -> bool:
        """Take in one status of one upgrade, if the lifecycle allows it. True if changed.
        (The first status seen of an upgrade is taken whatever it is: the topic's retention
        may have dropped the ones before it.)"""
        changed, self.in_flight = take_status(self.upgrades, self.in_flight, upgrade_id, status)
        return changed


def fold_status(store: PartitionStore, status: dict[str, Any]) -> None:
    """Rebuild `tenant:` state at restore from one committed `upgrade.status` event."""
    try:
        tenant_id, upgrade_id, name = status["tenant_id"], status["upgrade_id"], status["status"]
    except (KeyError, TypeError):
        return
    tenant = TenantState.load(store, tenant_id)
    if tenant.apply(upgrade_id, name):
        try:
            moment = utc_moment(str(status.get("occurred_at")))
        except ValueError:
            moment = None
        if moment is not None:
            tenant.stamp(int(moment.timestamp() * 1000))
        expires = None
        if tenant.in_flight is None and moment is not None:
            expires = int((moment + STATUSES_KEPT).timestamp() * 1000)  # else kept until its next upgrade ends
        store.apply(f"tenant:{tenant_id}", tenant.as_dict(), expires, logged=False)


IN_FLIGHT_STATUSES = (Status.ACCEPTED, Status.CREDIT_CHECK_PENDING, Status.MIGRATING)


def in_flight_gauges(engine: Any, now_ms: int) -> dict[tuple[str, str], float]:
    """/metrics: upgrades in flight by status, and how long the oldest has been in its status
    (the alert on an upgrade `migrating` for more than an hour)."""
    counts: dict[str, int] = {}
    oldest: dict[str, int] = {}
    for store in list(engine.stores.values()):
        for key, value in store.items():
            if not key.startswith("tenant:") or not isinstance(value, dict) or value.get("in_flight") is None:
                continue
            status = str(value["upgrades"].get(value["in_flight"], "?"))
            counts[status] = counts.get(status, 0) + 1
            since = value.get("since")
            if since is not None and since < oldest.get(status, now_ms + 1):
                oldest[status] = since
    gauges: dict[tuple[str, str], float] = {("in_flight", str(s)): 0 for s in IN_FLIGHT_STATUSES}
    gauges.update({("oldest_in_flight_s", str(s)): 0 for s in IN_FLIGHT_STATUSES})
    gauges.update({("in_flight", s): n for s, n in counts.items()})
    gauges.update({("oldest_in_flight_s", s): max(0, now_ms - t) / 1000 for s, t in oldest.items()})
    return gauges


def processor(settings: Settings, instance: str = "0", directory: LicenceDirectory | None = None,
              catalogue: Catalogue | None = None, clock: Callable[[], float] = time.time,
              **config: Any) -> StreamProcessor:
    return StreamProcessor(settings, intake_config(settings, directory, catalogue, instance, clock=clock,
                                                   **config), clock)


def intake_config(settings: Settings, directory: LicenceDirectory | None = None, catalogue: Catalogue | None = None,
                  instance: str = "0", clock: Callable[[], float] = time.time, **config: Any) -> ProcessorConfig:
    intake = Intake(settings, directory or open_directory(settings),
                    catalogue or Catalogue.for_settings(settings), clock)
    # Intake's records are many and small: a commit a second (or per 5000 records) instead
    # of every 200 ms keeps more of its throughput (bench/README.md); a request's statuses
    # are seen at most a second later, which nobody waiting for an upgrade notices.
    if config.get("commit_interval_ms") is None and settings.commit_interval_ms is None:
        config["commit_interval_ms"] = COMMIT_INTERVAL_MS
    return ProcessorConfig(
        group_id=GROUP_ID,
        sources=(
            Source(Topic.UPGRADE_REQUESTED, intake.on_request, check=check_request,
                   on_invalid=intake.on_invalid_request, prepare=intake.prepare_requests),
            Source(Topic.CREDIT_CHECK_DECIDED, intake.on_credit_decision),
            Source(Topic.UPGRADE_ENDED, intake.on_ended),
        ),
        tables=(Topic.SERVICE_HEALTH,),
        derived_from=((Topic.UPGRADE_STATUS, fold_status),),
        on_timer=intake.on_timer,
        gauges=in_flight_gauges,
        instance=instance,
        **config,
    )
