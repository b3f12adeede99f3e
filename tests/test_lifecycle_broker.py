"""Issue 10's cases that need a broker, end to end on the real one: an operator re-driving a
failed upgrade's dead-lettered batch, and users who take a source licence mid-upgrade.

The rules themselves are tested without a broker (tests/test_lifecycle_rules.py); these
show the same outcome through real transactions, real consumer groups and the
operators' own `planshift dlq redrive`.
"""

from __future__ import annotations

from cli import main
from consumers import intake, migrate, settle
from planshift.contract import Topic
from planshift.kafka.reader import read_topic
from planshift.storage.directory import Licence, SqliteDirectory
from tests.conftest import produce, running, seed_users, values, wait_for
from tests.test_intake import request, status_names, wait_status

SOURCE, SKU = "contoso-sub-m365_business_standard", "M365_BUSINESS_STANDARD"


class OutageDirectory:
    """The real directory; its migrations fail while `down`, as during a licence-service incident."""

    def __init__(self, inner):
        self.inner, self.down = inner, True

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def migrate(self, *args, **kwargs):
        if self.down:
            raise ConnectionError("licence service unavailable")
        return self.inner.migrate(*args, **kwargs)


def test_redriving_a_failed_upgrades_batch_never_completes_or_bills_it(settings, capsys, monkeypatch):
    settings = settings.with_(batch_size=2)
    seed_users(settings, "contoso", SOURCE, SKU, 4)
    produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", request(licenses=4))])
    directory = OutageDirectory(SqliteDirectory.for_settings(settings))
    worker = migrate.processor(settings, directory=directory, retry_backoff_s=0.01, commit_interval_ms=50)
    settlement = settle.processor(settings, commit_interval_ms=50)
    with running(intake.processor(settings, commit_interval_ms=50)), running(worker), running(settlement):
        failed = wait_status(settings, "ord-1", "failed")
        assert failed["reasons"][0]["code"] == "MIGRATION_FAILED"
        wait_for(lambda: read_topic(settings, settings.topic("license.batches.dlq")), 30, message="the dead letters")
        wait_for(lambda: settlement.metrics.records_by_topic.get(Topic.LICENSE_BATCH_COMPLETED, 0) >= 2, 30,
                 message="settlement to see both failures")

        directory.down = False  # the incident is over: the operator re-drives the dead letters
        monkeypatch.setenv("PLANSHIFT_BOOTSTRAP_SERVERS", settings.bootstrap_servers)
        monkeypatch.setenv("PLANSHIFT_TOPIC_PREFIX", settings.topic_prefix)
        # The upgrade is final: a re-drive could change nothing, so it is reported, not done…
        assert main(["dlq", "redrive", "license.batches.dlq", "--execute"]) == 0
        out = capsys.readouterr().out
        assert "2 upgrade already final" in out and "(failed)" in out and "re-drove 0 dead letters" in out
        # …unless the operator rolls forward by hand (docs/RUNBOOK.md) and says so.
        assert main(["dlq", "redrive", "license.batches.dlq", "--include-final", "--execute"]) == 0
        assert "re-drove 2 dead letters" in capsys.readouterr().out
        completed = lambda: [c for c in values(settings, Topic.LICENSE_BATCH_COMPLETED)  # noqa: E731
                             if c.get("outcome") == "completed"]
        wait_for(lambda: len(completed()) == 2, 30, message="the re-driven batches to run")
        wait_for(lambda: settlement.metrics.records_by_topic.get(Topic.LICENSE_BATCH_COMPLETED, 0) >= 4, 30,
                 message="settlement to see the re-driven completions")
    assert status_names(settings, "ord-1") == ["accepted", "migrating", "failed"], "failed is final"
    assert values(settings, Topic.BILLING_SWITCH) == [] and values(settings, Topic.CREDIT_ISSUED) == []
    assert [e["status"] for e in values(settings, Topic.UPGRADE_ENDED)] == ["failed"]


def test_users_added_mid_upgrade_are_moved_before_the_switch(settings):
    settings = settings.with_(batch_size=5)
    seed_users(settings, "contoso", SOURCE, SKU, 10)
    produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", request(licenses=15))])
    with running(intake.processor(settings, commit_interval_ms=50)):
        wait_status(settings, "ord-1", "migrating")  # the batches are planned for ten users
    directory = SqliteDirectory.for_settings(settings)
    directory.put([Licence("contoso", "joined-late", SOURCE, SKU, ("TEAMS",))])  # an admin adds a user
    with running(migrate.processor(settings, commit_interval_ms=50)), \
            running(settle.processor(settings, commit_interval_ms=50)):
        done = wait_status(settings, "ord-1", "completed")
    target = done["new_subscription_id"]
    assert directory.holders("contoso", SOURCE) == [], "nobody stays on the plan the switch cancels"
    assert "joined-late" in directory.holders("contoso", target)
    assert done["progress"] == {"batches_done": 2, "batch_count": 2, "users_done": 11, "users_total": 11}
    assert done["service_plan_resets"] == 1
    assert len(values(settings, Topic.BILLING_SWITCH)) == 1


class Clock:
    """Wall-clock time, moved on by the test (days pass in a second)."""

    def __init__(self):
        import time

        self._time, self.offset = time.time, 0.0

    def __call__(self) -> float:
        return self._time() + self.offset


def test_an_unanswered_credit_check_expires_once_across_a_restart(settings):
    """The expiry timer is state in intake's changelog: it survives a restart and fires once,
    in a real transaction."""
    seed_users(settings, "contoso", SOURCE, SKU, 2)
    produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", request(licenses=2, payment_method="invoice"))])
    clock = Clock()
    with running(intake.processor(settings, commit_interval_ms=50, clock=clock)):
        pending = wait_status(settings, "ord-1", "credit_check_pending")
    assert pending["credit_check"]["reason"] == "INVOICE_PAYMENT"
    clock.offset = 20 * 86400  # nobody answered for twenty days; intake was down meanwhile
    restarted = intake.processor(settings, commit_interval_ms=50, clock=clock)
    with running(restarted):
        rejected = wait_status(settings, "ord-1", "rejected")
        assert rejected["reasons"][0]["code"] == "CREDIT_CHECK_EXPIRED"
        wait_for(lambda: restarted.metrics.commits >= 1 and restarted.metrics.timers_fired == 1, 30,
                 message="the expiry to commit")
    again = intake.processor(settings, commit_interval_ms=50, clock=clock)
    with running(again):
        wait_for(lambda: again.metrics.restored_keys >= 1 or again.assigned_partitions, 30, message="a restore")
        wait_for(lambda: again.consumer is not None and len(again.assigned_partitions) == 18, 30,
                 message="every partition assigned")
    assert again.metrics.timers_fired == 0, "a timer fires once"
    assert status_names(settings, "ord-1") == ["accepted", "credit_check_pending", "rejected"]
