"""A stateful property test of the whole upgrade lifecycle, through the broker-free driver.

Hypothesis plays order systems (valid, odd and broken requests, ids shared by two
tenants), admins (users added and removed mid-upgrade), the credit system (approvals,
declines, silence), the licence directory (outages), operators (replays of any topic,
re-drives of dead letters, restarts) and time, in any order, and delivers planshift's own
records in any order too. After every step:

- the statuses of each upgrade only move forward, and nothing follows a final one;
- every user the admins have not removed holds a licence;
- no upgrade is billed or credited twice, and none is billed that failed;
and whenever everything is let run to rest with time passing, no upgrade is left in
flight and no tenant stays locked.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from consumers.intake import TenantState
from planshift.contract import Topic
from planshift.domain.lifecycle import FINAL, is_forward
from planshift.storage.directory import Licence
from tests.drivers import STANDARD, FlakyDirectory, Pipeline

TENANTS = ("t0", "t1", "t2")
UPGRADES = ("ord-1", "ord-2", "ord-3")
ODDITIES = (None, None, None, "same-target", "impossible-date", "offset", "existing-target", "fewer-services")


def source(tenant: str) -> str:
    return f"{tenant}-sub-m365_business_standard"


class Lifecycle(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="planshift-lifecycle-"))
        self.world = Pipeline(self.tmp, directory=FlakyDirectory, batch_size=3)
        self.present: set[tuple[str, str]] = set()
        self.next_user = 0
        for i, tenant in enumerate(TENANTS):
            for _ in range(2 + 3 * i):
                self._add_user(tenant)

    def teardown(self):
        self.world.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _add_user(self, tenant: str) -> None:
        user = f"user-{self.next_user}"
        self.next_user += 1
        self.world.store.put([Licence(tenant, user, source(tenant), STANDARD)])
        self.present.add((tenant, user))

    # -- the world ---------------------------------------------------------------------
    @initialize(invoice=st.booleans())
    def a_first_valid_request(self, invoice):
        """Every run starts with an upgrade that can complete, so the later steps have one to disturb."""
        self.world.publish(self.world.request("t0", "ord-1", licenses=12,
                                              payment_method="invoice" if invoice else "card"))

    @rule(tenant=st.sampled_from(TENANTS), upgrade=st.sampled_from(UPGRADES), invoice=st.booleans(),
          licenses=st.integers(1, 12), oddity=st.sampled_from(ODDITIES))
    def order_system_requests(self, tenant, upgrade, invoice, licenses, oddity):
        def edit(r):
            sub = r["tenant"]["subscriptions"][0]
            if oddity == "same-target":
                r["target_subscription_id"] = r["source_subscription_id"]
            elif oddity == "impossible-date":
                sub["current_period"]["end"] = "2026-11-31"
            elif oddity == "offset":
                r["occurred_at"] = r["occurred_at"][:19] + "-05:00"
            elif oddity == "existing-target":
                r["target_subscription_id"] = source(TENANTS[(TENANTS.index(tenant) + 1) % len(TENANTS)])
            elif oddity == "fewer-services":
                r["target_sku"] = "M365_BUSINESS_BASIC"

        self.world.publish(self.world.request(tenant, upgrade, licenses=licenses,
                                              payment_method="invoice" if invoice else "card", edit=edit))

    @rule(tenant=st.sampled_from(TENANTS), upgrade=st.sampled_from(UPGRADES), approved=st.booleans())
    def credit_system_decides(self, tenant, upgrade, approved):
        self.world.decide(upgrade, approved, tenant)

    @rule(tenant=st.sampled_from(TENANTS))
    def admin_adds_a_user(self, tenant):
        self._add_user(tenant)

    @rule(data=st.data())
    @precondition(lambda self: self.present)
    def admin_removes_a_user(self, data):
        tenant, user = data.draw(st.sampled_from(sorted(self.present)))
        self.world.store._db.execute("DELETE FROM licences WHERE tenant_id = ? AND user_id = ?", (tenant, user))
        self.present.discard((tenant, user))

    @rule(down=st.booleans())
    def directory_outage(self, down):
        self.world.directory.down = down

    @rule(seconds=st.sampled_from([60, 3600, 86400, 5 * 86400]))
    def time_passes(self, seconds):
        self.world.advance(seconds)

    # -- planshift, in any order ------------------------------------------------------
    @rule(which=st.integers(0, 2), limit=st.integers(1, 4))
    def a_consumer_handles_some(self, which, limit):
        self.world.drivers[which].handle_pending(limit=limit)

    @rule()
    def everything_runs(self):
        self.world.run()

    @rule(which=st.sampled_from([(0, Topic.UPGRADE_REQUESTED), (0, Topic.CREDIT_CHECK_DECIDED),
                                 (0, Topic.UPGRADE_ENDED), (1, Topic.LICENSE_BATCHES),
                                 (2, Topic.LICENSE_BATCH_COMPLETED)]))
    def operator_replays(self, which):
        driver, topic = which
        self.world.drivers[driver].replay(topic)

    @rule(data=st.data())
    def operator_redrives_a_dead_letter(self, data):
        letters = [(i, topic, r) for i, topic in ((0, Topic.UPGRADE_REQUESTED), (1, Topic.LICENSE_BATCHES),
                                                   (2, Topic.LICENSE_BATCH_COMPLETED))
                   for r in self.world.dead_letters(topic)]
        if not letters:
            return
        i, topic, letter = data.draw(st.sampled_from(letters))
        self.world.drivers[i].pipe(topic, letter.value, key=letter.key.decode() if letter.key else None)

    @rule(which=st.integers(0, 2))
    def a_consumer_restarts(self, which):
        self.world.drivers[which].restart()

    @rule()
    def everything_comes_to_rest(self):
        """Directory back, time passes beyond every credit check's expiry: nothing in flight."""
        self.world.directory.down = False
        self.world.run()
        self.world.advance(30 * 86400)
        self.world.run()
        for (tenant, upgrade), names in self._statuses().items():
            assert names[-1] in FINAL, f"{tenant}/{upgrade} stays {names[-1]}: {names}"
        for tenant in TENANTS:
            state = self._tenant(tenant)
            assert state.in_flight is None, f"{tenant} stays locked by {state.in_flight}"

    def _tenant(self, tenant: str) -> TenantState:
        for store in self.world.intake.engine.stores.values():
            if store.get(f"tenant:{tenant}") is not None:
                return TenantState.load(store, tenant)
        return TenantState(tenant, None, {})

    # -- what must always hold --------------------------------------------------------
    def _statuses(self) -> dict[tuple[str, str], list[str]]:
        found: dict[tuple[str, str], list[str]] = defaultdict(list)
        for s in self.world.events(Topic.UPGRADE_STATUS):
            found[(s["tenant_id"], s["upgrade_id"])].append(s["status"])
        return found

    @invariant()
    def statuses_only_move_forward(self):
        for key, names in self._statuses().items():
            assert is_forward(names), f"{key}: {names}"

    @invariant()
    def nobody_is_without_a_licence(self):
        for tenant, user in self.present:
            assert self.world.store.licences_of(tenant, user), f"{user} of {tenant} holds no licence"

    @invariant()
    def nothing_is_billed_twice_or_after_a_failure(self):
        statuses = self._statuses()
        for topic in (Topic.BILLING_SWITCH, Topic.CREDIT_ISSUED):
            ids = [(e["tenant_id"], e["upgrade_id"]) for e in self.world.events(topic)]
            assert len(ids) == len(set(ids)), f"{topic} twice: {ids}"
            for key in ids:
                assert "failed" not in statuses[key] and "rejected" not in statuses[key], f"{key} billed: {statuses[key]}"
                assert statuses[key][-1] == "completed", f"{key} billed but {statuses[key]}"


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])
