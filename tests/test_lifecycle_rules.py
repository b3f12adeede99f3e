"""Issue 10's eleven cases and the upgrade lifecycle, through the broker-free test driver,
on each licence directory (the embedded SQLite file and PostgreSQL).

Each case is what a real order system, admin or credit system produced and what it used
to cost (a user's licence, a bill for a failed upgrade, a tenant locked for ever); each
test runs intake, migration and settlement on `planshift.runtime.testing` with a real
embedded licence directory. The broker suite keeps what needs a broker
(tests/test_lifecycle_broker.py: the redrive-after-failure and late-user cases end to end).
"""

from __future__ import annotations

import pytest

from planshift.contract import Status, Topic
from planshift.domain.lifecycle import FINAL, NEXT, is_forward, may_follow
from planshift.storage.directory import Licence, MigrationRefused
from tests.drivers import PREMIUM, STANDARD, FlakyDirectory, Pipeline

SOURCE = "contoso-sub-m365_business_standard"
TARGET = "contoso-sub-m365_business_premium-ord-1"


@pytest.fixture
def world(tmp_path, directory_url):
    """The pipeline on each licence directory: every rule holds on SQLite and on PostgreSQL."""
    world = Pipeline(tmp_path, directory_url=directory_url)
    yield world
    world.store.close()


def wait_for_credit_check(world: Pipeline) -> None:
    """Two users, paying by invoice: the upgrade waits in credit_check_pending."""
    world.seed("contoso", 2)
    world.publish(world.request(licenses=2, payment_method="invoice"))
    world.run()


def completed_normally(world: Pipeline, upgrade_id: str = "ord-1") -> dict:
    assert world.status_names(upgrade_id) == ["accepted", "migrating", "completed"], world.statuses(upgrade_id)
    return world.last(upgrade_id)


# -- the lifecycle, as a table -----------------------------------------------------------

@pytest.mark.parametrize("current,new,allowed", [
    (None, "accepted", True), (None, "rejected", True), (None, "migrating", False),
    ("accepted", "credit_check_pending", True), ("accepted", "migrating", True), ("accepted", "rejected", True),
    ("credit_check_pending", "migrating", True), ("credit_check_pending", "rejected", True),
    ("credit_check_pending", "accepted", False),
    ("migrating", "migrating", True), ("migrating", "completed", True), ("migrating", "failed", True),
    ("migrating", "accepted", False), ("migrating", "rejected", False),
    *[(final, new, False) for final in ("rejected", "failed", "completed")
      for new in ("accepted", "credit_check_pending", "migrating", "completed", "failed", "rejected")],
])
def test_lifecycle_table(current, new, allowed):
    assert may_follow(current, new) is allowed


def test_final_statuses_have_no_successor():
    assert FINAL == {Status.REJECTED, Status.FAILED, Status.COMPLETED}
    assert all(not NEXT[s] for s in FINAL)
    assert is_forward(["accepted", "credit_check_pending", "migrating", "migrating", "completed"])
    assert not is_forward(["accepted", "migrating", "failed", "completed"])


def test_a_normal_upgrade_completes_with_its_credit(world):
    users = world.seed("contoso", 25)
    world.publish(world.request(licenses=25))
    world.run()
    done = completed_normally(world)
    assert done["progress"] == {"batches_done": 3, "batch_count": 3, "users_done": 25, "users_total": 25}
    assert world.holders("contoso", TARGET) == users and world.holders("contoso", SOURCE) == []
    assert len(world.of(Topic.BILLING_SWITCH, "ord-1")) == 1 and len(world.of(Topic.CREDIT_ISSUED, "ord-1")) == 1


# -- 1. a target equal to the source ----------------------------------------------------

def test_case_1_target_equal_to_source_is_invalid_and_nobody_loses_a_licence(world):
    users = world.seed("contoso", 5)
    world.publish(world.request(licenses=5, edit=lambda r: r.update(target_subscription_id=SOURCE)))
    world.run()
    assert world.status_names("ord-1") == ["rejected"]
    assert world.codes("ord-1") == ["INVALID_REQUEST"]
    assert "$.target_subscription_id: must differ from source_subscription_id" in world.last("ord-1")["reasons"][0]["message"]
    (dead,) = world.dead_letters(Topic.UPGRADE_REQUESTED)
    assert dead.header("dlq.error.class") == "InvalidEvent" and "target_subscription_id" in dead.header("dlq.error.message")
    assert world.holders("contoso", SOURCE) == users
    assert world.events(Topic.LICENSE_BATCHES) == []


def test_case_1_the_directory_itself_refuses_source_equal_to_target(world):
    users = world.seed("contoso", 3)
    with pytest.raises(MigrationRefused, match="same subscription"):
        world.store.migrate("contoso", "ord-1", users, SOURCE, SOURCE, STANDARD)
    assert world.holders("contoso", SOURCE) == users


def test_case_1_a_batch_the_directory_refuses_fails_the_upgrade_at_once(world):
    """Defence in depth: a batch that got past intake anyway is refused, never retried, never billed."""
    users = world.seed("contoso", 3)
    world.publish(world.request(licenses=3))
    world.run(world.intake)
    batch = world.events(Topic.LICENSE_BATCHES)[0]
    world.topics.records[world.settings.topic(Topic.LICENSE_BATCHES)].clear()
    batch.update(event_id="forged", target_subscription_id=SOURCE)
    world.migrate.pipe(Topic.LICENSE_BATCHES, batch, key="ord-1:0")
    world.run()
    assert world.status_names("ord-1") == ["accepted", "migrating", "failed"]
    assert world.codes("ord-1") == ["MIGRATION_FAILED"] and "MigrationRefused" in world.last("ord-1")["reasons"][0]["message"]
    (dead,) = world.dead_letters(Topic.LICENSE_BATCHES)
    assert dead.header("dlq.attempts") == "1"  # a permanent refusal is not retried
    assert world.holders("contoso", SOURCE) == users
    assert world.of(Topic.BILLING_SWITCH, "ord-1") == []


# -- 2. a target that names another existing subscription -------------------------------

def test_case_2_target_naming_an_existing_subscription_is_invalid(world):
    world.seed("contoso", 3)
    world.seed("contoso", 2, "contoso-sub-e3", "M365_E3", disabled=("TEAMS",))
    other = {"subscription_id": "contoso-sub-e3", "sku": "M365_E3", "status": "active", "licenses_purchased": 2,
             "add_ons": [], "billing_frequency": "monthly",
             "current_period": {"start": "2026-11-01", "end": "2026-12-01", "billed_minor": 100}, "prepaid": None}
    world.publish(world.request(licenses=3, extra_subscriptions=[other],
                                edit=lambda r: r.update(target_subscription_id="contoso-sub-e3")))
    world.run()
    assert world.codes("ord-1") == ["INVALID_REQUEST"]
    assert "existing subscription" in world.last("ord-1")["reasons"][0]["message"]
    assert [lic.disabled_services for lic in world.store.licences_of("contoso", "u-0000")
            if lic.subscription_id == "contoso-sub-e3"] == [("TEAMS",)]


def test_case_2_the_directory_never_overwrites_another_subscriptions_licence(world):
    users = world.seed("contoso", 2)
    world.seed("contoso", 2, "contoso-sub-e3", "M365_E3", disabled=("TEAMS",))
    with pytest.raises(MigrationRefused, match="another subscription already in use"):
        world.store.migrate("contoso", "ord-1", users, SOURCE, "contoso-sub-e3", PREMIUM)
    assert world.store.licences_of("contoso", "u-0000") == [
        Licence("contoso", "u-0000", "contoso-sub-e3", "M365_E3", ("TEAMS",)),
        Licence("contoso", "u-0000", SOURCE, STANDARD, ())]


# -- 3. users who take a source licence after the batches were planned ------------------

def test_case_3_users_added_mid_upgrade_are_moved_before_the_switch(world):
    world.seed("contoso", 20)
    world.publish(world.request(licenses=25))
    world.run(world.intake)  # batches planned for 20 users
    world.store.put([Licence("contoso", "late-1", SOURCE, STANDARD, ("EXCHANGE",)),
                     Licence("contoso", "late-2", SOURCE, STANDARD)])  # an admin adds two users
    world.run()
    done = completed_normally(world)
    assert world.holders("contoso", SOURCE) == [], "nobody is left on the plan the switch cancels"
    assert {"late-1", "late-2"} <= set(world.holders("contoso", TARGET))
    assert done["progress"] == {"batches_done": 2, "batch_count": 2, "users_done": 22, "users_total": 22}
    assert done["service_plan_resets"] == 1  # late-1's disabled Exchange was recorded
    assert ("contoso", "late-1", SOURCE, STANDARD, ("EXCHANGE",)) in world.store.resets("ord-1")


# -- 4. a credit-check approval re-checks what changed while it waited ------------------

def test_case_4_approval_rechecks_licence_holders(world):
    wait_for_credit_check(world)
    assert world.status_names("ord-1") == ["accepted", "credit_check_pending"]
    world.store.put([Licence("contoso", "third", SOURCE, STANDARD)])  # a third user, during the check
    world.decide("ord-1", approved=True)
    world.run()
    assert world.status_names("ord-1") == ["accepted", "credit_check_pending", "rejected"]
    assert world.codes("ord-1") == ["MORE_USERS_THAN_LICENSES", "LICENSES_BELOW_ASSIGNED_USERS"]
    assert world.events(Topic.LICENSE_BATCHES) == [] and world.events(Topic.BILLING_SWITCH) == []
    assert len(world.holders("contoso", SOURCE)) == 3


def test_case_4_approval_rechecks_service_health(world):
    wait_for_credit_check(world)
    world.set_health("EXCHANGE", "incident")
    world.decide("ord-1", approved=True)
    world.run()
    assert world.codes("ord-1") == ["NOT_FULLY_SET_UP_OR_SERVICE_UNAVAILABLE"]
    assert world.last("ord-1")["reasons"][0]["retry_after"] == "PT3H"


def test_case_4_an_approval_with_nothing_changed_migrates(world):
    wait_for_credit_check(world)
    world.decide("ord-1", approved=True)
    world.run()
    assert world.status_names("ord-1") == ["accepted", "credit_check_pending", "migrating", "completed"]


# -- 5. a calendar-impossible date ------------------------------------------------------

@pytest.mark.parametrize("field,edit", [
    ("current_period.end", lambda s: s["current_period"].update(end="2026-11-31")),
    ("current_period", lambda s: s["current_period"].update(start="2026-12-01", end="2026-11-01")),
    ("prepaid.term_end", lambda s: s.update(prepaid={"term_start": "2026-01-01", "term_end": "2027-02-29",
                                                     "paid_minor": 1})),
    ("prepaid", lambda s: s.update(prepaid={"term_start": "2027-01-01", "term_end": "2027-01-01", "paid_minor": 1})),
])
def test_case_5_an_impossible_period_is_invalid_and_the_tenant_stays_free(world, field, edit):
    world.seed("contoso", 3)
    world.publish(world.request(licenses=3, edit=lambda r: edit(r["tenant"]["subscriptions"][0])))
    world.run()
    assert world.codes("ord-1") == ["INVALID_REQUEST"]
    assert f"$.tenant.subscriptions[0].{field}" in world.last("ord-1")["reasons"][0]["message"]
    assert len(world.dead_letters(Topic.UPGRADE_REQUESTED)) == 1
    world.publish(world.request(upgrade="ord-2", licenses=3))  # the tenant is not locked
    world.run()
    completed_normally(world, "ord-2")


def test_case_5_a_settlement_that_fails_every_attempt_fails_the_upgrade_and_frees_the_tenant(world):
    """Never wedged: whatever makes settling impossible, the upgrade ends `failed`."""
    world.seed("contoso", 3)
    world.publish(world.request(licenses=3))
    world.run(world.intake, world.migrate)
    log = world.topics.records[world.settings.topic(Topic.LICENSE_BATCH_COMPLETED)]
    completion = log[0].event
    completion["terms"]["current_period"]["end"] = "2026-11-31"  # as a request before validity would carry
    log[0] = log[0]._replace(value=__import__("json").dumps(completion).encode())
    world.run()
    assert world.status_names("ord-1") == ["accepted", "migrating", "failed"]
    assert world.codes("ord-1") == ["SETTLEMENT_FAILED"]
    assert "ValueError" in world.last("ord-1")["reasons"][0]["message"]
    assert world.of(Topic.UPGRADE_ENDED, "ord-1")[0]["status"] == "failed"
    assert world.of(Topic.BILLING_SWITCH, "ord-1") == []
    world.publish(world.request(upgrade="ord-2", licenses=3))
    world.run()
    assert world.status_names("ord-2")[:2] == ["accepted", "migrating"], "the tenant's lock was released"


# -- 6. a failed upgrade never completes or bills ---------------------------------------

def test_case_6_redriving_a_failed_upgrades_batch_neither_completes_nor_bills_it(tmp_path):
    world = Pipeline(tmp_path, directory=FlakyDirectory)
    world.seed("contoso", 15)
    world.publish(world.request(licenses=15))
    world.run(world.intake)
    world.directory.down = True
    world.migrate.handle_pending(limit=1)  # batch 0 fails every attempt
    world.directory.down = False
    world.run()
    assert world.status_names("ord-1") == ["accepted", "migrating", "failed"]
    assert world.codes("ord-1") == ["MIGRATION_FAILED"]
    (dead,) = world.dead_letters(Topic.LICENSE_BATCHES)
    world.migrate.pipe(Topic.LICENSE_BATCHES, dead.value, key=dead.key.decode())  # the operator re-drives it
    world.run()
    assert world.status_names("ord-1") == ["accepted", "migrating", "failed"], "failed is final"
    assert world.of(Topic.BILLING_SWITCH, "ord-1") == [] and world.of(Topic.CREDIT_ISSUED, "ord-1") == []
    assert [e["status"] for e in world.of(Topic.UPGRADE_ENDED, "ord-1")] == ["failed"]


# -- 7. a target licence already held with services switched off ------------------------

def test_case_7_resetting_an_already_held_target_licence_is_recorded(world):
    world.seed("contoso", 3)
    world.store.put([Licence("contoso", "u-0001", TARGET, PREMIUM, ("INTUNE", "TEAMS"))])  # assigned early by an admin
    world.publish(world.request(licenses=3))
    world.run()
    done = completed_normally(world)
    assert ("contoso", "u-0001", TARGET, PREMIUM, ("INTUNE", "TEAMS")) in world.store.resets("ord-1")
    assert done["service_plan_resets"] == 1
    assert world.store.licences_of("contoso", "u-0001") == [Licence("contoso", "u-0001", TARGET, PREMIUM, ())]


# -- 8. fewer services -------------------------------------------------------------------

def test_case_8_premium_to_basic_is_not_supported(world):
    world.seed("contoso", 3, sku=PREMIUM)
    world.publish(world.request(licenses=3, source_sku=PREMIUM, target_sku="M365_BUSINESS_BASIC"))
    world.run()
    assert world.codes("ord-1") == ["TARGET_PLAN_NOT_SUPPORTED"]
    assert world.last("ord-1")["reasons"][0]["remedy"] == "MANUAL_CHANGE"


# -- 9. a credit check that is never answered -------------------------------------------

def test_case_9_an_unanswered_credit_check_expires_once_and_frees_the_tenant(world):
    world.seed("contoso", 2)
    world.publish(world.request(licenses=2, payment_method="invoice"))  # Tuesday 2026-11-17
    world.run()
    pending = world.last("ord-1")
    assert pending["credit_check"] == {"reason": "INVOICE_PAYMENT", "due_by": "2026-11-19"}
    assert world.advance(9 * 86400) == 0  # nine days on: not yet (ten business days end 2026-12-01)
    world.intake.restart()  # the timer is state: it survives a restart
    assert world.advance(6 * 86400) == 1
    assert world.status_names("ord-1") == ["accepted", "credit_check_pending", "rejected"]
    assert world.codes("ord-1") == ["CREDIT_CHECK_EXPIRED"]
    assert world.advance(86400) == 0, "a timer fires once"
    world.decide("ord-1", approved=True)  # too late: changes nothing
    world.publish(world.request(upgrade="ord-2", licenses=2))
    world.run()
    assert world.status_names("ord-1") == ["accepted", "credit_check_pending", "rejected"]
    completed_normally(world, "ord-2")


def test_case_9_expiry_days_are_configurable(tmp_path):
    world = Pipeline(tmp_path, credit_check_expiry_days=1)
    wait_for_credit_check(world)
    assert world.advance(86400) == 0  # Wednesday 09:30: the one business day is not over
    assert world.advance(15 * 3600) == 1  # Thursday 00:30
    assert world.codes("ord-1") == ["CREDIT_CHECK_EXPIRED"]


def test_case_9_a_decision_in_time_cancels_the_expiry(world):
    wait_for_credit_check(world)
    world.decide("ord-1", approved=False)
    world.run()
    assert world.advance(30 * 86400) == 0
    assert world.codes("ord-1") == ["CREDIT_CHECK_DECLINED"]


# -- 10. timestamps with an offset are read in UTC --------------------------------------

def test_case_10_the_credit_checks_due_by_counts_from_the_utc_day(world):
    world.seed("contoso", 2)
    world.publish(world.request(licenses=2, payment_method="invoice",
                                edit=lambda r: r.update(occurred_at="2026-11-19T22:30:00-05:00")))
    world.run()
    (check,) = world.events(Topic.CREDIT_CHECK_REQUESTED)
    # Friday 2026-11-20 in UTC (Thursday locally): two business days on is Tuesday, not Monday.
    assert check["due_by"] == "2026-11-24" and world.last("ord-1")["credit_check"]["due_by"] == "2026-11-24"


# -- 11. two tenants sending the same upgrade_id ----------------------------------------

def test_case_11_an_upgrade_id_of_another_tenant_is_refused_visibly(world):
    world.seed("contoso", 3)
    world.seed("fabrikam", 4, "fabrikam-sub-m365_business_standard")
    world.publish(world.request("contoso", "ord-1", licenses=3))
    world.publish(world.request("fabrikam", "ord-1", licenses=4))
    world.run()
    completed_normally(world)
    assert {s["tenant_id"] for s in world.statuses("ord-1")} == {"contoso"}
    (dead,) = world.dead_letters(Topic.UPGRADE_REQUESTED)
    assert dead.header("dlq.error.class") == "UpgradeIdTaken"
    assert "already used by another tenant" in dead.header("dlq.error.message")
    assert dead.event["tenant_id"] == "fabrikam" and dead.header("dlq.attempts") == "1"
    assert len(world.holders("fabrikam", "fabrikam-sub-m365_business_standard")) == 4
    assert [s["tenant_id"] for s in world.events(Topic.BILLING_SWITCH)] == ["contoso"]


# -- terminal statuses under replay -----------------------------------------------------

def test_replaying_every_topic_after_completion_changes_nothing(world):
    world.seed("contoso", 12)
    world.publish(world.request(licenses=12))
    world.run()
    before = {t: len(world.topics.read(t)) for t in (Topic.UPGRADE_STATUS, Topic.BILLING_SWITCH, Topic.CREDIT_ISSUED)}
    world.intake.replay(Topic.UPGRADE_REQUESTED)
    world.migrate.replay(Topic.LICENSE_BATCHES)
    world.settle.replay(Topic.LICENSE_BATCH_COMPLETED)
    world.run()
    assert {t: len(world.topics.read(t)) for t in before} == before


def test_a_late_decision_for_a_rejected_upgrade_changes_nothing(world):
    wait_for_credit_check(world)
    world.decide("ord-1", approved=False)
    world.decide("ord-1", approved=True)
    world.run()
    assert world.status_names("ord-1") == ["accepted", "credit_check_pending", "rejected"]
    assert world.events(Topic.LICENSE_BATCHES) == []


def test_the_admins_status_view_says_why_a_credit_check_waits_and_until_when(world):
    from cli.status import describe_status

    wait_for_credit_check(world)
    text = describe_status(world.statuses("ord-1"))
    assert "CREDIT_CHECK_PENDING" in text
    assert "credit check pending (paying by invoice), due by 2026-11-19" in text


# -- state that can never be needed again expires -----------------------------------------

def _keys(driver, prefix: str) -> set[str]:
    return {k for k in driver.state() if k.startswith(prefix)}


def test_completed_work_is_remembered_while_it_can_be_replayed_and_forgotten_after(world):
    from consumers.settle import FINAL_KEPT
    from planshift.contract import lifetime_ms

    world.seed("contoso", 12)
    world.publish(world.request(licenses=12))
    world.run()
    assert _keys(world.migrate, "done:") == {"done:ord-1:0", "done:ord-1:1"}
    assert _keys(world.settle, "upgrade:") == {"upgrade:ord-1"}
    batches_kept = lifetime_ms(Topic.LICENSE_BATCHES) / 1000

    # A day before the batches' records can be gone, a replay is still ignored…
    world.advance(batches_kept - 86400)
    world.migrate.replay(Topic.LICENSE_BATCHES)
    world.settle.replay(Topic.LICENSE_BATCH_COMPLETED)
    world.run()
    assert len(world.events(Topic.LICENSE_BATCH_COMPLETED)) == 2 and len(world.events(Topic.BILLING_SWITCH)) == 1
    # …and once they are, the markers go, with their tombstones on the changelog (so a
    # restart does not bring them back); settlement still knows the upgrade is final.
    world.advance(2 * 86400)
    assert _keys(world.migrate, "done:") == set()
    changelog = world.topics.records[world.migrate.engine.changelog]
    assert {r.key.decode() for r in changelog if r.value is None} == {"done:ord-1:0", "done:ord-1:1"}
    world.migrate.restart()
    assert _keys(world.migrate, "done:") == set()
    assert _keys(world.settle, "upgrade:") == {"upgrade:ord-1"}

    # Settlement forgets the final upgrade only when no completion of it can arrive any more.
    world.advance(FINAL_KEPT.total_seconds() - batches_kept - 86400 - 3600)  # an hour before
    assert _keys(world.settle, "upgrade:") == {"upgrade:ord-1"}
    world.advance(2 * 3600)
    assert _keys(world.settle, "upgrade:") == set()


def test_an_upgrade_in_flight_never_expires(world):
    world.seed("contoso", 12)
    world.publish(world.request(licenses=12))
    world.run(world.intake)
    world.migrate.handle_pending(limit=1)  # one batch of two done; the workers then stop for months
    world.run(world.settle)
    world.advance(200 * 86400)
    world.settle.restart()
    assert world.settle.state()["upgrade:ord-1"]["status"] == Status.MIGRATING
    world.run()
    assert world.status_names("ord-1") == ["accepted", "migrating", "completed"]
    assert len(world.events(Topic.BILLING_SWITCH)) == 1


def test_intake_forgets_a_tenant_with_nothing_in_flight_when_its_statuses_are_gone_as_a_restart_would(world):
    from consumers.intake import STATUSES_KEPT

    world.seed("contoso", 2)
    world.publish(world.request(licenses=2))
    world.seed("fabrikam", 2, subscription="fabrikam-sub-m365_business_standard")
    world.publish(world.request("fabrikam", "ord-2", licenses=2, payment_method="invoice"))  # waits for a check
    world.run()
    assert _keys(world.intake, "tenant:") == {"tenant:contoso", "tenant:fabrikam"}
    world.advance(STATUSES_KEPT.total_seconds() - 3600)
    assert "tenant:contoso" in _keys(world.intake, "tenant:")
    world.intake.restart()  # the fold gives the restored state the same expiry
    assert "tenant:contoso" in _keys(world.intake, "tenant:")
    world.advance(2 * 3600)
    # contoso's upgrade ended long ago; fabrikam's credit check expired meanwhile (a timer),
    # so fabrikam goes too, but one lifetime of its own last status after that.
    assert _keys(world.intake, "tenant:") == {"tenant:fabrikam"}
    world.intake.restart()  # the statuses have left the topic: nothing comes back
    assert _keys(world.intake, "tenant:") == {"tenant:fabrikam"}


def test_an_upgrade_id_repeated_months_later_is_still_a_repeat(world):
    world.seed("contoso", 2)
    world.publish(world.request(licenses=2))
    world.run()
    world.advance(120 * 86400)  # intake has long forgotten the tenant; the directory has not
    assert _keys(world.intake, "tenant:") == set()
    world.publish(world.request(licenses=2))  # the same upgrade_id in a new event
    world.run()
    assert world.status_names("ord-1") == ["accepted", "migrating", "completed"]
    assert len(world.events(Topic.BILLING_SWITCH)) == 1
    world.publish(world.request(upgrade="ord-2", licenses=2))  # a new id is a new upgrade
    world.run()
    assert world.status_names("ord-2")[-1] == "completed"


def test_a_dead_lettered_request_redriven_weeks_later_still_runs_once(world):
    """Its tries are weeks apart, but none committed: each re-drive is the same request handled again."""
    world.seed("contoso", 2)
    world.directory = world.store
    request = world.request(licenses=2)
    world.publish(request)
    world.run()
    assert world.status_names("ord-1") == ["accepted", "migrating", "completed"]
    written = len(world.events(Topic.UPGRADE_STATUS))
    for _ in range(3):  # the same request re-sent (a re-drive) every 30 days, long after the tenant was forgotten
        world.advance(30 * 86400)
        world.publish(request)
        world.run()
    world.advance(40 * 86400)
    world.publish(request)
    world.run()
    assert len(world.events(Topic.UPGRADE_STATUS)) == written  # once completed, never again
    assert len(world.events(Topic.BILLING_SWITCH)) == 1


def test_a_request_that_failed_and_is_redriven_weeks_apart_runs_when_it_finally_can(tmp_path):
    """Dead-lettered in an outage, re-driven 30 days later into another outage, then again
    30 days after that: the same request each time, never committed, so it runs at last."""
    class ReadsFail(FlakyDirectory):  # intake's reads of the directory fail while it is down
        def holders(self, *args):
            if self.down:
                raise ConnectionError("licence directory unreachable")
            return self.store.holders(*args)

        def holders_many(self, *args):
            if self.down:
                raise ConnectionError("licence directory unreachable")
            return self.store.holders_many(*args)

    world = Pipeline(tmp_path, directory=ReadsFail)
    world.seed("contoso", 2)
    world.directory.down = True
    world.publish(world.request(licenses=2))
    world.run()
    for down in (True, False):
        world.advance(30 * 86400)
        letter = world.dead_letters(Topic.UPGRADE_REQUESTED)[-1]
        world.directory.down = down
        world.intake.pipe(Topic.UPGRADE_REQUESTED, letter.value, key="contoso")
        world.run()
    assert world.status_names("ord-1")[-1] == "completed"
    assert len(world.events(Topic.BILLING_SWITCH)) == 1
