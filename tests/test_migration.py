"""Licence migration and settlement against the real broker: exactly one switch, one credit."""

from __future__ import annotations

import contextlib
import signal
from collections import Counter
from datetime import date, datetime, timezone

import pyarrow.parquet as pq

from consumers import intake, migrate, settle
from planshift.contract import Topic
from planshift.domain.money import prorate
from planshift.events import with_envelope
from planshift.kafka.reader import read_topic, stable_end_offsets
from planshift.storage.directory import Licence, SqliteDirectory, open_directory
from planshift.storage.reports import reset_report_path
from producers.samples import month_period, upgrade_request
from tests.conftest import kill_when, produce, running, spawn, values, wait_for

SOURCE_SKU, TARGET_SKU = "M365_BUSINESS_STANDARD", "M365_BUSINESS_PREMIUM"


def today() -> date:
    return datetime.now(timezone.utc).date()


def request(tenant, upgrade, users, **kw):
    return with_envelope(upgrade_request(tenant, upgrade, today=today(), licenses=users, **kw), "upgrade.requested")


def source_sub(tenant):
    return f"{tenant}-sub-{SOURCE_SKU.lower()}"


def seed(settings, tenant, users, disabled_every=0, other_every=0):
    directory = open_directory(settings)  # SQLite, or the settings' PostgreSQL database
    licences = []
    for i in range(users):
        disabled = ("SHAREPOINT",) if disabled_every and i % disabled_every == 0 else ()
        licences.append(Licence(tenant, f"u{i:06d}", source_sub(tenant), SOURCE_SKU, disabled))
        if other_every and i % other_every == 0:
            licences.append(Licence(tenant, f"u{i:06d}", f"{tenant}-sub-exchange", "EXCHANGE_ONLINE_PLAN_1"))
    directory.put(licences)
    directory.close()


def statuses(settings, upgrade_id):
    return [v for v in values(settings, Topic.UPGRADE_STATUS) if v["upgrade_id"] == upgrade_id]


def wait_status(settings, upgrade_id, status, timeout=120):
    return wait_for(lambda: next((s for s in statuses(settings, upgrade_id) if s["status"] == status), None),
                    timeout, interval=0.5, message=f"{upgrade_id} {status}")


@contextlib.contextmanager
def pipeline(settings, migrate_instances=2):
    procs = [intake.processor(settings, commit_interval_ms=50), settle.processor(settings, commit_interval_ms=50)]
    procs += [migrate.processor(settings, instance=str(i), commit_interval_ms=50) for i in range(migrate_instances)]
    with contextlib.ExitStack() as stack:
        for p in procs:
            stack.enter_context(running(p, timeout=60))
        yield procs


def assert_directory_migrated(settings, tenant, users, target_sub, other_every=0):
    directory = open_directory(settings)
    try:
        assert directory.count_holders(tenant, source_sub(tenant)) == 0
        assert directory.count_holders(tenant, target_sub) == users
        if other_every:
            assert directory.count_holders(tenant, f"{tenant}-sub-exchange") == len(range(0, users, other_every))
    finally:
        directory.close()


def test_a_20000_user_tenant_migrates_over_all_partitions_and_settles_once(settings):
    settings = settings.with_(batch_size=100)
    users = 20_000
    seed(settings, "contoso", users, disabled_every=7, other_every=10)
    req = request("contoso", "ord-big", users, billed_minor=125_000)
    produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", req)])
    with pipeline(settings):
        completed = wait_status(settings, "ord-big", "completed", timeout=240)

    batches = read_topic(settings, settings.topic(Topic.LICENSE_BATCHES))
    assert len(batches) == 200 and len({b.partition for b in batches}) == settings.batch_partitions
    per_partition = Counter(b.partition for b in batches)  # round-robin: 16 or 17 each, no hot partition
    assert max(per_partition.values()) - min(per_partition.values()) <= 1
    assert all(b.key == f"ord-big:{b.value['batch_no']}" for b in batches)  # the contract's key, unchanged
    completions = values(settings, Topic.LICENSE_BATCH_COMPLETED)
    assert sorted(c["batch_no"] for c in completions) == list(range(200))

    switches = values(settings, Topic.BILLING_SWITCH)
    credits = values(settings, Topic.CREDIT_ISSUED)
    assert len(switches) == 1 and len(credits) == 1
    effective = date.fromisoformat(switches[0]["effective_date"])
    start, end = month_period(today())
    expected = prorate(125_000, (end - effective).days, (end - start).days)
    assert credits[0]["amount_minor"] == expected == completed["credit_minor"]
    assert credits[0]["event_id"] == credits[0]["credit_id"] == "ord-big:credit"
    assert switches[0]["event_id"] == "ord-big:billing-switch"
    ended = values(settings, Topic.UPGRADE_ENDED)  # intake's signal, beside the completed status
    assert [(e["upgrade_id"], e["status"], e["event_id"]) for e in ended] == [("ord-big", "completed", "ord-big:ended")]
    assert switches[0]["old_subscription_id"] == source_sub("contoso")
    assert credits[0]["due_by"] == date.fromordinal(effective.toordinal() + 30).isoformat()

    assert completed["progress"]["users_done"] == users
    resets = len(range(0, users, 7))
    assert completed["service_plan_resets"] == resets
    names = [s["status"] for s in statuses(settings, "ord-big")]
    assert names[0] == "accepted" and names[-1] == "completed"
    assert 2 <= names.count("migrating") <= 11  # progress, rate-limited to tenths

    assert_directory_migrated(settings, "contoso", users, req["target_subscription_id"], other_every=10)
    report = pq.read_table(reset_report_path(settings, "ord-big")).to_pylist()
    assert len(report) == resets and report[0]["disabled_services"] == ["SHAREPOINT"]
    assert {r["subscription_id"] for r in report} == {source_sub("contoso")}


def test_prepaid_upgrade_credits_the_checkout_rule_and_reports_the_forfeit(settings):
    seed(settings, "adatum", 10)
    year_start = today().replace(month=1, day=1)
    prepaid = {"term_start": year_start.isoformat(), "term_end": year_start.replace(year=year_start.year + 1).isoformat(),
               "paid_minor": 3_650_000}
    req = request("adatum", "ord-prepaid", 10, prepaid=prepaid, new_total_cost_minor=50_000,
                  prepaid_forfeit_acknowledged=True)
    produce(settings, Topic.UPGRADE_REQUESTED, [("adatum", req)])
    with pipeline(settings, migrate_instances=1):
        completed = wait_status(settings, "ord-prepaid", "completed")
    credit = values(settings, Topic.CREDIT_ISSUED)[0]
    effective = date.fromisoformat(values(settings, Topic.BILLING_SWITCH)[0]["effective_date"])
    term_end = date.fromisoformat(prepaid["term_end"])
    remaining = prorate(3_650_000, (term_end - effective).days, (term_end - year_start).days)
    assert credit["basis"] == "PREPAID_REMAINING"
    assert credit["amount_minor"] == min(remaining, 50_000) == completed["credit_minor"]
    assert credit["forfeit_minor"] == remaining - credit["amount_minor"] == completed["forfeit_minor"]
    assert completed["forfeit_minor"] > 0
    # nobody's settings were reset (seeded without disabled services): no report for it
    assert completed["service_plan_resets"] == 0
    assert not reset_report_path(settings, "ord-prepaid").exists()


class FailingDirectory:
    """A directory whose migrations always fail, as a broken licence service would."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def migrate(self, *args, **kwargs):
        raise ConnectionError("licence service unavailable")


def test_a_batch_that_keeps_failing_fails_the_upgrade_and_frees_the_tenant(settings):
    seed(settings, "tailspin", 5)
    produce(settings, Topic.UPGRADE_REQUESTED, [("tailspin", request("tailspin", "ord-doomed", 5))])
    broken = migrate.processor(settings, directory=FailingDirectory(SqliteDirectory.for_settings(settings)),
                               retry_backoff_s=0.01, commit_interval_ms=50)
    with running(intake.processor(settings, commit_interval_ms=50)), running(broken), \
            running(settle.processor(settings, commit_interval_ms=50)):  # settlement owns the statuses from here on
        failed = wait_status(settings, "ord-doomed", "failed")
        assert failed["reasons"][0]["code"] == "MIGRATION_FAILED"
        assert "licence service unavailable" in failed["reasons"][0]["message"]
        # intake reads the failure and frees the tenant for a new attempt
        produce(settings, Topic.UPGRADE_REQUESTED, [("tailspin", request("tailspin", "ord-retry", 5))])
        wait_status(settings, "ord-retry", "migrating")
    dead = read_topic(settings, settings.topic("license.batches.dlq"))
    assert len(dead) >= 1 and dead[0].headers["dlq.attempts"] == b"5"
    assert dead[0].headers["dlq.error.class"] == b"ConnectionError"
    assert values(settings, Topic.BILLING_SWITCH) == []


def under_way(settings) -> bool:
    """Whether some batch has completed: the workers are in mid-tenant."""
    return stable_end_offsets(settings, settings.topic(Topic.LICENSE_BATCH_COMPLETED)) > 0


@contextlib.contextmanager
def stopped_after(*workers):
    """SIGTERM the worker processes when the block ends, however it ends."""
    try:
        yield
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(30)


def settle_until_completed(settings, upgrade_id):
    with running(settle.processor(settings, commit_interval_ms=50)):
        wait_status(settings, upgrade_id, "completed", timeout=180)


def start_worker(settings, log_path):
    return spawn(settings, log_path, "run", "migrate", "--commit-every", "3", "--commit-interval-ms", "50")


def test_a_worker_killed_mid_tenant_leaves_every_user_migrated_once(settings, tmp_path):
    settings = settings.with_(batch_size=50)
    users = 6000
    seed(settings, "northwind", users, disabled_every=5, other_every=3)
    req = request("northwind", "ord-kill", users)
    produce(settings, Topic.UPGRADE_REQUESTED, [("northwind", req)])
    with running(intake.processor(settings, commit_interval_ms=50)) as _:
        wait_status(settings, "ord-kill", "migrating")
    kill_when(start_worker(settings, tmp_path / "worker.log"), lambda: under_way(settings),
              "the worker to be under way")
    done_at_kill = len(values(settings, Topic.LICENSE_BATCH_COMPLETED))
    assert done_at_kill < 120, "the worker finished before the kill; the test proves nothing"

    with stopped_after(start_worker(settings, tmp_path / "worker.log")):
        settle_until_completed(settings, "ord-kill")

    completions = Counter(c["batch_no"] for c in values(settings, Topic.LICENSE_BATCH_COMPLETED))
    assert set(completions) == set(range(120)) and set(completions.values()) == {1}
    assert len(values(settings, Topic.BILLING_SWITCH)) == 1
    assert len(values(settings, Topic.CREDIT_ISSUED)) == 1
    assert Counter(s["status"] for s in statuses(settings, "ord-kill"))["completed"] == 1
    assert_directory_migrated(settings, "northwind", users, req["target_subscription_id"], other_every=3)
    directory = SqliteDirectory.for_settings(settings)
    for i in (0, 1, 2999, 5999):
        subs = sorted(lic.subscription_id for lic in directory.licences_of("northwind", f"u{i:06d}"))
        expected = sorted([req["target_subscription_id"]] + (["northwind-sub-exchange"] if i % 3 == 0 else []))
        assert subs == expected
    assert len(directory.resets("ord-kill")) == len(range(0, users, 5))


def test_workers_on_two_hosts_share_a_postgresql_directory_and_one_is_killed(settings, tmp_path, postgres_url):
    """Migration workers as separate processes with data folders of their own (two
    "hosts") and one PostgreSQL directory: one is SIGKILLed mid-tenant, the other and its
    restart finish, and every user is moved once, with what they had switched off recorded."""
    from planshift.storage.postgres import PostgresDirectory

    settings = settings.with_(batch_size=50, directory_url=postgres_url)
    users = 4000
    seed(settings, "northwind", users, disabled_every=5)
    directory = PostgresDirectory(postgres_url)
    req = request("northwind", "ord-hosts", users)
    produce(settings, Topic.UPGRADE_REQUESTED, [("northwind", req)])
    hosts = [tmp_path / "host-a", tmp_path / "host-b"]
    for host in hosts:
        host.mkdir()

    def worker(host, instance):
        return spawn(settings, host / "worker.log", "run", "migrate", "--instance", instance,
                     PLANSHIFT_DATA_DIR=str(host), PLANSHIFT_DIRECTORY_URL=postgres_url)

    with running(intake.processor(settings, commit_interval_ms=50)):
        wait_status(settings, "ord-hosts", "migrating")
    with stopped_after(worker(hosts[1], "b")):
        kill_when(worker(hosts[0], "a"), lambda: under_way(settings), "the workers to be under way")
        with stopped_after(worker(hosts[0], "a")):
            settle_until_completed(settings, "ord-hosts")

    completions = Counter(c["batch_no"] for c in values(settings, Topic.LICENSE_BATCH_COMPLETED))
    assert set(completions) == set(range(80)) and set(completions.values()) == {1}
    assert len(values(settings, Topic.BILLING_SWITCH)) == 1
    assert_directory_migrated(settings, "northwind", users, req["target_subscription_id"])
    assert len(directory.resets("ord-hosts")) == len(range(0, users, 5))
    assert not list((tmp_path / "host-a").glob("*.sqlite3")) and not list((tmp_path / "host-b").glob("*.sqlite3"))
    by_host = {host.name: (host / "worker.log").read_text() for host in hosts}
    assert all("processor started" in log for log in by_host.values()), "both hosts' workers ran"
    directory.close()


def test_two_workers_started_without_an_instance_share_the_partitions_instead_of_fencing(settings, tmp_path):
    """`planshift run migrate` twice with no --instance (as `docker compose --scale` does):
    each takes a name of its own, both get partitions, and the upgrade completes."""
    import socket

    from planshift.kafka import clients

    settings = settings.with_(batch_size=50)
    seed(settings, "contoso", 1200)
    req = request("contoso", "ord-scale", 1200)
    produce(settings, Topic.UPGRADE_REQUESTED, [("contoso", req)])
    from tests.test_telemetry import free_port, sample, scrape

    ports = [free_port(), free_port()]
    workers = [spawn(settings, tmp_path / f"worker-{i}.log", "run", "migrate", "--metrics-port", str(ports[i]))
               for i in range(2)]

    def field(thing, name):
        return thing.get(name) if isinstance(thing, dict) else getattr(thing, name, None)

    seen = []

    def members():
        from kafka.errors import KafkaError

        try:
            described = admin.describe_groups([settings.topic(migrate.GROUP_ID)])
        except KafkaError:  # not there yet
            return None
        group = described[0] if isinstance(described, list) else next(iter(described.values()))
        found = {field(m, "group_instance_id"): field(m, "member_assignment") for m in field(group, "members") or []}
        seen[:] = [found]
        return found if len(found) == 2 and all(found.values()) else None

    admin = clients.admin(settings)
    with stopped_after(*workers), contextlib.closing(admin):
        found = wait_for(members, 90, interval=0.5, message=f"two members, each with partitions (last seen {seen})")
        host = socket.gethostname()
        assert sorted(found) == sorted(f"{settings.topic_prefix}{migrate.GROUP_ID}-{host}-{slot}" for slot in (0, 1))
        with running(intake.processor(settings, commit_interval_ms=50)):
            settle_until_completed(settings, "ord-scale")
        # both kept committing: each migrated batches of its own partitions
        for port in ports:
            scraped = scrape(port)
            assert sample(scraped, "planshift_transactions_committed_total") > 0
            assert sample(scraped, "planshift_batches_migrated_total", outcome="completed") > 0
            assert 0 < sample(scraped, "planshift_partitions_assigned") < 12
    assert Counter(c["batch_no"] for c in values(settings, Topic.LICENSE_BATCH_COMPLETED)) == Counter(range(24))
    logs = "".join((tmp_path / f"worker-{i}.log").read_text() for i in range(2))
    assert "ProducerFenced" not in logs and "fenced" not in logs.lower()
