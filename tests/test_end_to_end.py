"""The whole chain on the real broker: request → intake → migration → settlement → billing
system (simulated, billing in advance, with faults) → archive → nightly reconciliation."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from consumers import intake, migrate, settle
from consumers.archive import archiver
from jobs.reconcile import reconcile
from planshift.contract import Topic
from planshift.events import with_envelope
from planshift.kafka.reader import read_topic
from planshift.storage.lake import Lake
from producers import billing
from producers.samples import upgrade_request
from tests.conftest import produce, running, seed_users, wait_for

TENANTS = 8
RATES = {"overlap": 0.3, "late-credit": 0.3, "wrong-amount": 0.3, "new-billing-early": 0.3,
         "redelivered-invoice": 0.5, "split-credit": 0.5}  # the last two are harmless


def test_invoices_reconcile_against_what_planshift_switched_and_credited(settings):
    today = datetime.now(timezone.utc).date()
    for n in range(TENANTS):
        seed_users(settings, f"t{n}", f"t{n}-sub-m365_business_standard", "M365_BUSINESS_STANDARD", 4)
    produce(settings, Topic.UPGRADE_REQUESTED, [(f"t{n}", with_envelope(
        upgrade_request(f"t{n}", f"ord-{n}", today=today, licenses=4, billed_minor=30_000 + n), "upgrade.requested"))
        for n in range(TENANTS)])
    # An order system's impossible request (issue 10, case 5): refused, and not archived, so the
    # nightly reconciliation of everybody else still runs.
    impossible = with_envelope(upgrade_request("tbad", "ord-bad", today=today, licenses=4), "upgrade.requested")
    impossible["tenant"]["subscriptions"][0]["current_period"]["end"] = "2026-11-31"
    produce(settings, Topic.UPGRADE_REQUESTED, [("tbad", impossible)])
    simulator = billing.BillingSimulator(RATES, seed="e2e")
    lake = Lake.for_settings(settings)
    archive = archiver(settings, flush_interval_s=0.2)
    archive_thread = threading.Thread(target=archive.run, daemon=True)
    archive_thread.start()
    try:
        with running(intake.processor(settings, commit_interval_ms=50)), \
                running(migrate.processor(settings, commit_interval_ms=50)), \
                running(settle.processor(settings, commit_interval_ms=50)), \
                running(billing.processor(settings, rates=RATES, seed="e2e", commit_interval_ms=50)):
            # billed in advance: every upgrade has its old plan's current period, its switch and
            # its credit invoice (no credit is missing at these rates), and an overlap one more
            extra = sum(simulator.faulty(fault, f"ord-{n}") for n in range(TENANTS)
                        for fault in ("overlap", "redelivered-invoice"))
            wait_for(lambda: lake_count(lake, Topic.INVOICE_ISSUED) >= 3 * TENANTS + extra
                     and lake_count(lake, Topic.UPGRADE_STATUS) >= 3 * TENANTS, 120, interval=0.5,
                     message="every invoice and status to be archived")
    finally:
        archive.stop()
        archive_thread.join(30)
    groups = {settings.topic("planshift-intake").encode(), settings.topic("planshift-archive").encode()}
    wait_for(lambda: {r.headers["dlq.consumer.group"] for r in read_topic(
        settings, settings.topic("upgrade.requested.dlq"))} == groups, 30,
        message="intake and the archiver to dead-letter the impossible request")

    run_date = today + timedelta(days=60)
    result = reconcile(settings, run_date, progress=False, chart=False)
    errors = result.findings[result.findings["severity"] == "error"]
    found = {(row.upgrade_id, row.check_code) for row in errors.itertuples()}
    expected = {(f"ord-{n}", code) for n in range(TENANTS) for fault, code in
                (("overlap", "OVERLAP"), ("late-credit", "LATE_CREDIT"), ("wrong-amount", "AMOUNT_MISMATCH"),
                 ("new-billing-early", "NEW_BILLING_EARLY"))
                if simulator.faulty(fault, f"ord-{n}")}
    assert found == expected and expected, "each injected fault, and nothing else, is found"
    statuses = dict(zip(result.upgrades["upgrade_id"], result.upgrades["status"]))
    assert len(statuses) == TENANTS
    faulty = {upgrade for upgrade, _ in expected}
    assert {u for u, s in statuses.items() if s == "OPEN"} == faulty
    assert {u for u, s in statuses.items() if s == "MATCHED"} == set(statuses) - faulty


def lake_count(lake: Lake, topic: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(path).num_rows for path in lake.files(topic))
