"""A live, `read_committed` view of what the admins see: every upgrade's statuses from
`upgrade.status`, the services' health from `service.health`, and how many dead letters
each `.dlq` topic holds — the article's "Check upgrade status", kept up to date.

`StatusView.poll()` reads what arrived since the last call (without a consumer group:
the view never commits offsets, so it costs the pipeline nothing and starts from the
beginning each time). The status page (`planshift serve`), the demo's progress bars and
`POST /api/preview` read it; nothing here writes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

from kafka import TopicPartition

from planshift.contract import CONSUMED_TOPICS, TERMINAL_STATUSES, Status, Topic, dlq
from planshift.kafka import clients
from planshift.kafka.reader import _decode
from planshift.settings import Settings


@dataclass
class UpgradeView:
    """One upgrade as `upgrade.status` tells it, its statuses in order (each event once)."""
    upgrade_id: str
    tenant_id: str
    history: list[dict[str, Any]] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set, repr=False)

    def add(self, status: dict[str, Any]) -> bool:
        event_id = status.get("event_id") or f"{status.get('status')}:{len(self.history)}"
        if event_id in self._seen:
            return False  # a redo or a re-drive wrote the same event again
        self._seen.add(event_id)
        self.history.append(status)
        return True

    @property
    def latest(self) -> dict[str, Any]:
        return self.history[-1]

    @property
    def status(self) -> str:
        return self.latest["status"]

    @property
    def final(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def requested_at(self) -> str:
        return self.history[0].get("occurred_at", "")

    @property
    def updated_at(self) -> str:
        return self.latest.get("occurred_at", "")

    @property
    def progress(self) -> dict[str, int] | None:
        for status in reversed(self.history):
            if status.get("progress"):
                return status["progress"]
        return None

    @property
    def reasons(self) -> list[dict[str, Any]]:
        return list(self.latest.get("reasons") or [])

    @property
    def credit_check(self) -> dict[str, Any] | None:
        for status in self.history:
            if status.get("credit_check"):
                return status["credit_check"]
        return None

    def as_dict(self, history: bool = False) -> dict[str, Any]:
        latest = self.latest
        view = {"upgrade_id": self.upgrade_id, "tenant_id": self.tenant_id, "status": self.status,
                "requested_at": self.requested_at, "updated_at": self.updated_at,
                "progress": self.progress, "reasons": self.reasons, "credit_check": self.credit_check,
                "admin_locked_until": latest.get("admin_locked_until") if self.status == Status.MIGRATING else None}
        if self.status == Status.COMPLETED:
            view.update({key: latest.get(key) for key in
                         ("new_subscription_id", "credit_minor", "forfeit_minor", "currency")})
            resets = latest.get("service_plan_resets")
            view["service_plan_resets"] = len(resets) if isinstance(resets, list) else int(resets or 0)
        if history:
            view["history"] = [{key: s.get(key) for key in ("occurred_at", "status", "reasons", "progress",
                                                              "admin_locked_until", "credit_check")}
                               for s in self.history]
        return view


class StatusView:
    """`upgrade.status`, `service.health` and the dead-letter topics, read as they grow."""

    def __init__(self, settings: Settings, *, dead_letters: bool = True):
        self.settings = settings
        self.upgrades: dict[str, UpgradeView] = {}
        self.by_tenant: dict[str, list[str]] = {}  # tenant_id → its upgrade ids, in the order first seen
        self.statuses_by_tenant: dict[str, list[dict[str, Any]]] = {}
        self.health: dict[str, str] = {}
        self.dead_letters: Counter[str] = Counter()  # source topic → dead letters (of every group)
        self.dead_letter_groups: Counter[tuple[str, str]] = Counter()  # (source topic, consumer group) → count
        self.records = 0
        self.changed: set[str] = set()  # upgrade ids with a new status since a reader last emptied it
        self.lock = threading.RLock()  # the page reads while a thread polls
        self._names = {settings.topic(Topic.UPGRADE_STATUS): Topic.UPGRADE_STATUS,
                       settings.topic(Topic.SERVICE_HEALTH): Topic.SERVICE_HEALTH}
        if dead_letters:
            self._names.update({settings.topic(dlq(t)): dlq(t) for t in CONSUMED_TOPICS})
        self._consumer = clients.consumer(settings, None, enable_auto_commit=False, client_id="planshift-view")
        self._assigned: set[str] = set()
        self._assign()

    def _assign(self) -> None:
        """Assign every partition of the view's topics that exists (a topic created later
        is picked up on a later poll)."""
        missing = [t for t in self._names if t not in self._assigned]
        if not missing:
            return
        tps = list(self._consumer.assignment())
        fresh = []
        for topic in missing:
            partitions = self._consumer.partitions_for_topic(topic)
            if partitions:
                fresh += [TopicPartition(topic, p) for p in sorted(partitions)]
                self._assigned.add(topic)
        if fresh:
            self._consumer.assign(tps + fresh)
            self._consumer.seek_to_beginning(*fresh)

    def poll(self, timeout_ms: int = 200) -> int:
        """Apply what arrived since the last call; the number of records applied."""
        if len(self._assigned) < len(self._names):
            self._assign()
        if not self._assigned:
            time.sleep(timeout_ms / 1000)
            return 0
        applied = 0
        for tp, records in self._consumer.poll(timeout_ms=timeout_ms, max_records=5000).items():
            name = self._names[tp.topic]
            with self.lock:
                for record in records:
                    applied += 1
                    if name.endswith(".dlq"):
                        headers = dict(record.headers or [])
                        group = (headers.get("dlq.consumer.group") or b"?").decode("utf-8", "replace")
                        self.dead_letters[name.removesuffix(".dlq")] += 1
                        self.dead_letter_groups[(name.removesuffix(".dlq"), group)] += 1
                    else:
                        self._apply(name, _decode(record.value))
        self.records += applied
        return applied

    def catch_up(self, timeout: float = 30.0) -> None:
        """Poll until every assigned partition is read up to its end as of now."""
        self._assign()
        tps = list(self._consumer.assignment())
        ends = self._consumer.end_offsets(tps) if tps else {}
        deadline = time.monotonic() + timeout
        while any(self._consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the status view did not catch up within {timeout:.0f}s")
            self.poll(200)

    def _apply(self, name: str, value: Any) -> None:
        if name == Topic.UPGRADE_STATUS:
            if not isinstance(value, dict) or not isinstance(value.get("upgrade_id"), str):
                return
            upgrade_id, tenant_id = value["upgrade_id"], str(value.get("tenant_id"))
            upgrade = self.upgrades.get(upgrade_id)
            if upgrade is None:
                upgrade = self.upgrades[upgrade_id] = UpgradeView(upgrade_id, tenant_id)
                self.by_tenant.setdefault(tenant_id, []).append(upgrade_id)
            if upgrade.add(value):
                self.statuses_by_tenant.setdefault(tenant_id, []).append(value)
                self.changed.add(upgrade_id)
        elif name == Topic.SERVICE_HEALTH:
            if isinstance(value, dict) and isinstance(value.get("service"), str):
                self.health[value["service"]] = value.get("status")

    def find(self, *, tenant: str | None = None, status: str | None = None) -> list[UpgradeView]:
        with self.lock:
            ids = self.by_tenant.get(tenant, []) if tenant is not None else list(self.upgrades)
            found = [self.upgrades[i] for i in ids]
        return [u for u in found if status is None or u.status == status]

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(u.status for u in self.upgrades.values())

    def tenant_state(self, tenant_id: str) -> tuple[str | None, dict[str, str]]:
        """(the upgrade in flight, upgrade_id → latest status) of one tenant, folded from its
        statuses as intake folds them at restore."""
        from planshift.domain.lifecycle import take_status

        with self.lock:
            statuses = list(self.statuses_by_tenant.get(tenant_id, ()))
        upgrades: dict[str, str] = {}
        in_flight = None
        for status in statuses:
            _, in_flight = take_status(upgrades, in_flight, status["upgrade_id"], str(status.get("status")))
        return in_flight, upgrades

    def owner_of(self, upgrade_id: str) -> str | None:
        with self.lock:
            upgrade = self.upgrades.get(upgrade_id)
            return upgrade.tenant_id if upgrade else None

    def __iter__(self) -> Iterator[UpgradeView]:
        with self.lock:
            return iter(list(self.upgrades.values()))

    def close(self) -> None:
        self._consumer.close()


def preview_request(view: StatusView, settings: Settings, request: dict[str, Any], directory=None, today=None):
    """`planshift preview` and `POST /api/preview`: intake's verdict and settlement's credit
    for a would-be request, from the view (the tenant's upgrades, service health) and the
    licence directory (its holders). Reads only."""
    from datetime import datetime, timezone

    from planshift.catalogue import Catalogue
    from planshift.domain.eligibility import TenantView
    from planshift.domain.preview import preview
    from planshift.storage.directory import open_directory

    tenant_id, upgrade_id = request.get("tenant_id"), request.get("upgrade_id")
    known = None
    owner = view.owner_of(upgrade_id) if isinstance(upgrade_id, str) else None
    if owner is not None and owner != tenant_id:
        known = "taken"
    in_flight, upgrades = view.tenant_state(str(tenant_id))
    if upgrade_id in upgrades:
        known = "repeat"
    holders = 0
    if isinstance(tenant_id, str) and isinstance(request.get("source_subscription_id"), str):
        own = directory is None
        directory = directory or open_directory(settings)
        try:
            holders = directory.count_holders(tenant_id, request["source_subscription_id"])
        finally:
            if own and hasattr(directory, "close"):
                directory.close()
    with view.lock:
        health = dict(view.health)
    return preview(request, TenantView(holders, health, in_flight, settings.prepaid_policy),
                   Catalogue.for_settings(settings), today or datetime.now(timezone.utc).date(),
                   batch_size=settings.batch_size, credit_check_threshold_minor=settings.credit_check_threshold_minor,
                   credit_check_expiry_days=settings.credit_check_expiry_days, known=known)
