"""Intake against the real broker: eligibility, idempotency, dead letters, the credit-check gate."""

from __future__ import annotations

from collections import Counter
from datetime import date

import pytest

from consumers import intake
from planshift.contract import Topic
from planshift.kafka.reader import read_topic
from producers.samples import upgrade_request
from tests.conftest import produce, running, seed_users, values, wait_for

TODAY = date.today()


def request(tenant="contoso", upgrade="ord-1", **kw):
    from planshift.events import with_envelope

    return with_envelope(upgrade_request(tenant, upgrade, today=TODAY, **kw), "upgrade.requested")


def statuses(settings, upgrade_id=None):
    return [v for v in values(settings, Topic.UPGRADE_STATUS) if upgrade_id is None or v["upgrade_id"] == upgrade_id]


def status_names(settings, upgrade_id):
    return [s["status"] for s in statuses(settings, upgrade_id)]


def wait_status(settings, upgrade_id, status, timeout=30):
    return wait_for(lambda: next((s for s in statuses(settings, upgrade_id) if s["status"] == status), None),
                    timeout, message=f"{upgrade_id} {status}")


@pytest.fixture
def make_intake(settings):
    def make(**overrides):
        return intake.processor(settings.with_(**overrides) if overrides else settings, commit_interval_ms=50)
    return make


def test_valid_request_is_accepted_and_batched_over_all_partitions(settings, make_intake):
    settings = settings.with_(batch_size=10)
    users = seed_users(settings, "contoso", "contoso-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 120)
    seed_users(settings, "contoso", "contoso-sub-other", "EXCHANGE_ONLINE_PLAN_1", 5, prefix="x")
    produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", request(licenses=120))])
    with running(make_intake(batch_size=10)):
        wait_status(settings, "ord-1", "migrating")
    assert status_names(settings, "ord-1") == ["accepted", "migrating"]
    migrating = statuses(settings, "ord-1")[1]
    assert migrating["progress"] == {"batches_done": 0, "batch_count": 12, "users_done": 0, "users_total": 120}
    assert migrating["admin_locked_until"]

    batches = read_topic(settings, settings.topic(Topic.LICENSE_BATCHES))
    assert sorted(b.key for b in batches) == sorted(f"ord-1:{n}" for n in range(12))
    covered = Counter(u for b in batches for u in b.value["user_ids"])
    assert set(covered) == set(users) and set(covered.values()) == {1}
    assert len({b.partition for b in batches}) >= 6, "batches of one tenant should spread over partitions"
    assert all(b.value["target_sku"] == "M365_BUSINESS_PREMIUM" for b in batches)


def test_ineligible_request_is_rejected_with_reasons(settings, make_intake):
    seed_users(settings, "fabrikam", "fabrikam-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 30)
    produce(settings, Topic.SERVICE_HEALTH, [("SHAREPOINT", {"service": "SHAREPOINT", "status": "incident",
                                                              "updated_at": "2026-11-17T08:00:00Z"})])
    produce(settings, Topic.UPGRADE_REQUESTED, [("fabrikam", request("fabrikam", "ord-2", licenses=20, licenses_purchased=30,
                                                                     unpaid_balance_minor=900))])
    with running(make_intake()):
        rejected = wait_status(settings, "ord-2", "rejected")
    assert [r["code"] for r in rejected["reasons"]] == [
        "LICENSES_BELOW_ASSIGNED_USERS", "NOT_FULLY_SET_UP_OR_SERVICE_UNAVAILABLE", "UNPAID_BALANCE"]
    assert rejected["reasons"][1]["retry_after"] == "PT3H" and "SHAREPOINT" in rejected["reasons"][1]["message"]
    assert values(settings, Topic.LICENSE_BATCHES) == []


def test_bad_records_are_dead_lettered_and_the_rest_goes_on(settings, make_intake):
    for tenant in ("t1", "t2", "t3"):
        seed_users(settings, tenant, f"{tenant}-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 3)
    broken = request("t2", "ord-broken")
    del broken["currency"]
    broken["licenses"] = "many"
    produce(settings, Topic.UPGRADE_REQUESTED, [
        ("t1", request("t1", "ord-a")),
        ("t2", b"{this is not json"),
        ("t2", broken),
        ("t3", request("t3", "ord-b")),
    ])
    with running(make_intake()):
        wait_status(settings, "ord-a", "migrating")
        wait_status(settings, "ord-b", "migrating")
        rejected = wait_status(settings, "ord-broken", "rejected")
    assert rejected["reasons"][0]["code"] == "INVALID_REQUEST"
    assert rejected["reasons"][0]["remedy"] == "FIX_REQUEST"
    assert "$.currency: required field is missing" in rejected["reasons"][0]["message"]
    assert "$.licenses" in rejected["reasons"][0]["message"]

    dead = read_topic(settings, settings.topic("upgrade.requested.dlq"))
    assert [d.value if isinstance(d.value, bytes) else d.value["upgrade_id"] for d in dead] == [
        b"{this is not json", "ord-broken"]
    for d in dead:
        assert d.key == "t2"
        assert d.headers["event_type"] == b"upgrade.requested"  # the original headers are kept
        assert d.headers["dlq.source.topic"] == settings.topic("upgrade.requested").encode()
        assert d.headers["dlq.consumer.group"] == settings.topic("planshift-intake").encode()
        assert d.headers["dlq.error.class"] == b"InvalidEvent"
        for name in ("dlq.source.partition", "dlq.source.offset", "dlq.source.timestamp"):
            assert d.headers[name].decode().isdigit()
    assert b"not JSON" in dead[0].headers["dlq.error.message"]
    assert b"$.currency: required field is missing" in dead[1].headers["dlq.error.message"]


def test_the_same_request_twice_makes_one_upgrade(settings, make_intake):
    seed_users(settings, "contoso", "contoso-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 7)
    first = request()
    again = dict(first, event_id="another-delivery")
    produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", first), ("contoso", again)])
    with running(make_intake()):
        wait_status(settings, "ord-1", "migrating")
    # A replay after a restart (state restored from the changelog) is ignored too.
    produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", first)])
    with running(make_intake()) as processor:
        wait_for(lambda: processor.metrics.records >= 1 and processor.metrics.restored_keys >= 1, 30,
                 message="the replay to be handled")
    assert status_names(settings, "ord-1") == ["accepted", "migrating"]
    assert len(values(settings, Topic.LICENSE_BATCHES)) == 1


def test_another_upgrade_of_the_tenant_waits_for_the_first(settings, make_intake):
    seed_users(settings, "contoso", "contoso-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 4)
    produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", request(upgrade="ord-1")),
                                                ("contoso", request(upgrade="ord-2"))])
    with running(make_intake()):
        wait_status(settings, "ord-1", "migrating")
        second = wait_status(settings, "ord-2", "rejected")
        assert [r["code"] for r in second["reasons"]] == ["CHANGE_IN_PROGRESS_OR_CREDIT_CHECK_PENDING"]
        # Settlement reports the first upgrade completed: the tenant is free again.
        from planshift.events import event, upgrade_ended
        produce(settings, Topic.UPGRADE_STATUS, [("contoso", event(
            "upgrade.status", "contoso", "ord-1:status:completed", upgrade_id="ord-1", status="completed",
            reasons=[]))])
        produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", request(upgrade="ord-3"))])
        assert wait_status(settings, "ord-3", "rejected")["reasons"][0]["code"] == \
            "CHANGE_IN_PROGRESS_OR_CREDIT_CHECK_PENDING"  # the status alone is not intake's signal
        produce(settings, Topic.UPGRADE_ENDED, [("contoso", upgrade_ended("contoso", "ord-1", "completed"))])
        produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", request(upgrade="ord-4"))])
        wait_status(settings, "ord-4", "migrating")


def test_a_failed_upgrade_frees_the_tenant_too(settings, make_intake):
    seed_users(settings, "contoso", "contoso-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 4)
    produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", request(upgrade="ord-1"))])
    from planshift.events import upgrade_ended
    with running(make_intake()):
        wait_status(settings, "ord-1", "migrating")
        produce(settings, Topic.UPGRADE_ENDED, [("contoso", upgrade_ended("contoso", "ord-1", "failed"))])
        produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", request(upgrade="ord-2"))])
        wait_status(settings, "ord-2", "migrating")


def test_credit_check_approved_continues(settings, make_intake):
    seed_users(settings, "northwind", "northwind-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 9)
    produce(settings, Topic.UPGRADE_REQUESTED, [("northwind", request("northwind", "ord-7", payment_method="invoice"))])
    from planshift.events import event
    with running(make_intake()):
        wait_status(settings, "ord-7", "credit_check_pending")
        checks = values(settings, Topic.CREDIT_CHECK_REQUESTED)
        assert [(c["upgrade_id"], c["reason"], c["amount_minor"]) for c in checks] == [("ord-7", "INVOICE_PAYMENT", 264000)]
        assert values(settings, Topic.LICENSE_BATCHES) == []  # users keep their plan meanwhile
        produce(settings, Topic.CREDIT_CHECK_DECIDED, [("northwind", event(
            "credit.check.decided", "northwind", upgrade_id="ord-7", approved=True,
            decided_at="2026-11-18T10:00:00Z"))])
        wait_status(settings, "ord-7", "migrating")
    assert status_names(settings, "ord-7") == ["accepted", "credit_check_pending", "migrating"]
    assert len(values(settings, Topic.LICENSE_BATCHES)) == 1


def test_credit_check_declined_rejects_and_frees_the_tenant(settings, make_intake):
    seed_users(settings, "northwind", "northwind-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 9)
    produce(settings, Topic.UPGRADE_REQUESTED, [("northwind", request("northwind", "ord-8",
                                                                      new_total_cost_minor=2_000_000))])
    from planshift.events import event
    with running(make_intake()):
        pending = wait_status(settings, "ord-8", "credit_check_pending")
        assert pending["reasons"] == []
        assert values(settings, Topic.CREDIT_CHECK_REQUESTED)[0]["reason"] == "COST_THRESHOLD"
        produce(settings, Topic.CREDIT_CHECK_DECIDED, [("northwind", event(
            "credit.check.decided", "northwind", upgrade_id="ord-8", approved=False,
            decided_at="2026-11-18T10:00:00Z"))])
        rejected = wait_status(settings, "ord-8", "rejected")
        assert [r["code"] for r in rejected["reasons"]] == ["CREDIT_CHECK_DECLINED"]
        assert rejected["reasons"][0]["remedy"] == "CONTACT_SUPPORT"
        produce(settings, Topic.UPGRADE_REQUESTED, [("northwind", request("northwind", "ord-9"))])
        wait_status(settings, "ord-9", "migrating")
    assert values(settings, Topic.LICENSE_BATCHES)[0]["upgrade_id"] == "ord-9"
