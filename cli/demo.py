"""`planshift demo`: the whole path a newcomer can watch, on the embedded defaults.

Start the local broker, create the topics, fill the embedded licence directory with the
sample tenants' users, publish the shipped sample upgrade requests (one breaks its
schema on purpose, one is not JSON), approve the credit check one of them needs, run
intake, two migration workers, settlement, a simulated billing system (which makes a
few mistakes on purpose) and the archiver, then finance's reconciliation. It shows each
upgrade's statuses with their reasons, the licence-migration batches, the billing
switches and credits, the dead letters and the reconciliation's findings. Running it again publishes the same requests again: intake recognises every
upgrade id and starts nothing twice.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import planshift
from planshift.contract import Topic, dlq
from planshift.events import encode_json, event_headers
from planshift.kafka.reader import end_offsets, read_topic
from planshift.kafka.topics import create_topics
from planshift.ops.broker import LocalBroker
from planshift.settings import Settings
from planshift.storage.directory import Licence, SqliteDirectory
from planshift.storage.lake import Lake

SAMPLES = Path(planshift.__file__).resolve().parent / "data" / "sample-upgrade-requests.jsonl"


def register(sub) -> None:
    demo = sub.add_parser("demo", help="start the broker, create topics, publish sample requests, read them back")
    demo.add_argument("--file", type=Path, default=None, help="requests to publish (default: the shipped samples)")
    demo.set_defaults(handler=run_demo, needs_broker=False)


def run_demo(args, settings: Settings) -> int:
    return run(settings, args.file)


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def seed_directory(settings: Settings, file: Path) -> int:
    """Give each sample tenant as many users on its source plan as it buys licences for."""
    directory = SqliteDirectory.for_settings(settings)
    licences = []
    for line in file.read_text().splitlines():
        try:
            request = json.loads(line)
            tenant, source, count = request["tenant_id"], request["source_subscription_id"], int(request["licenses"])
            sku = next(s["sku"] for s in request["tenant"]["subscriptions"] if s["subscription_id"] == source)
        except (ValueError, KeyError, TypeError, StopIteration):
            continue  # the broken samples have no users
        licences += [Licence(tenant, f"{tenant}-user-{i:04d}", source, sku, ("SHAREPOINT",) if i % 4 == 0 else ())
                     for i in range(count)]
    directory.put(licences)
    directory.close()
    return len(licences)


def run(settings: Settings, file: Path | None = None) -> int:
    from cli.publish import publish_with_progress
    from consumers import intake, migrate, settle
    from consumers.archive import archiver
    from jobs.reconcile import reconcile
    from producers import billing

    file = file or SAMPLES
    step(f"1. local Apache Kafka at {settings.bootstrap_servers}")
    status, started = LocalBroker(settings).start()
    print(("started: " if started else "already running: ") + status.describe())

    step("2. topics of the contract")
    print(create_topics(settings).describe())

    step(f"3. licence directory in {settings.data_dir}")
    print(f"{seed_directory(settings, file)} licences of the sample tenants' users")

    step(f"4. an order system publishes {file.name}")
    report = publish_with_progress(settings, file)
    for number, message in report.errors:
        print(f"  line {number} refused by the publisher: {message}")
    print(report.describe())
    # The publisher refuses what breaks the schema; an order system that skips it
    # still reaches intake, which dead-letters the record and tells the sender.
    from planshift.events import with_envelope
    from planshift.kafka import clients
    broken = with_envelope(json.loads(file.read_text().splitlines()[0]), Topic.UPGRADE_REQUESTED)
    broken.update(upgrade_id="ord-broken-0001", tenant_id="litware", licenses="many")
    with clients.producer(settings) as producer:
        producer.send(settings.topic(Topic.UPGRADE_REQUESTED), key=b"litware", value=encode_json(broken),
                      headers=event_headers(Topic.UPGRADE_REQUESTED))
    print("and a schema-breaking request (ord-broken-0001) sent without the publisher's check")

    step("5. intake → migration workers → settlement → billing system → archive")
    ends = end_offsets(settings, settings.topic(Topic.UPGRADE_REQUESTED))
    processors = [intake.processor(settings), migrate.processor(settings, instance="0"),
                  migrate.processor(settings, instance="1"), settle.processor(settings),
                  billing.processor(settings, rates=DEMO_FAULTS, seed=DEMO_SEED)]
    names = ("intake", "migrate-0", "migrate-1", "settle", "billing (simulated)")
    lake_writer = archiver(settings, flush_interval_s=0.5)
    threads = [threading.Thread(target=p.run, daemon=True) for p in [*processors, lake_writer]]
    for thread in threads:
        thread.start()
    approved: set[str] = set()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for check in read_topic(settings, settings.topic(Topic.CREDIT_CHECK_REQUESTED)):
            if check.value["upgrade_id"] not in approved:
                _approve(settings, check.value)
                approved.add(check.value["upgrade_id"])
                print(f"the credit system approves the check of {check.value['upgrade_id']}")
        if processors[0].caught_up(Topic.UPGRADE_REQUESTED, ends) and _all_settled(settings) \
                and _invoices_archived(settings):
            break
        time.sleep(0.5)
    for p in [*processors, lake_writer]:
        p.stop()
    for thread in threads:
        thread.join(60)
    for name, p in zip(names, processors):
        print(f"{name:<20} handled {p.metrics.records:>4} records in {p.metrics.commits} transactions")
    print(f"{'archive':<20} wrote {lake_writer.sink.archived:>4} events to {Lake.for_settings(settings).root}")

    step("6. what the admins see on upgrade.status")
    statuses = defaultdict(list)
    for record in read_topic(settings, settings.topic(Topic.UPGRADE_STATUS)):
        statuses[record.value["upgrade_id"]].append(record.value)
    for upgrade_id, events in statuses.items():
        print(f"{events[0]['tenant_id']:<10} {upgrade_id:<20} {' → '.join(e['status'] for e in events)}")
        for reason in events[-1]["reasons"]:
            retry = f", retry after {reason['retry_after']}" if reason["retry_after"] else ""
            print(f"{'':31}{reason['code']} ({reason['remedy']}{retry}): {reason['message'][:90]}")
    batches = Counter(r.value["upgrade_id"] for r in read_topic(settings, settings.topic(Topic.LICENSE_BATCHES)))
    step("7. licence-migration batches, and the money")
    for upgrade_id, count in batches.items():
        print(f"{upgrade_id:<20} {count} batch(es)")
    for record in read_topic(settings, settings.topic(Topic.BILLING_SWITCH)):
        v = record.value
        print(f"billing.switch {v['upgrade_id']}: {v['old_sku']} → {v['new_sku']} effective {v['effective_date']}")
    for record in read_topic(settings, settings.topic(Topic.CREDIT_ISSUED)):
        v = record.value
        print(f"credit.issued  {v['credit_id']}: {v['amount_minor']} {v['currency']} minor units "
              f"({v['basis']}, {v['unused_days']}/{v['period_days']} days), due by {v['due_by']}")
    checks = read_topic(settings, settings.topic(Topic.CREDIT_CHECK_REQUESTED))
    for check in checks:
        print(f"credit check requested for {check.value['upgrade_id']} ({check.value['reason']}), "
              f"due by {check.value['due_by']}")
    dead = read_topic(settings, settings.topic(dlq(Topic.UPGRADE_REQUESTED)))
    step(f"8. dead letters on {dlq(Topic.UPGRADE_REQUESTED)}: {len(dead)}")
    for record in dead:
        print(f"{record.headers.get('dlq.consumer.group', b'?').decode()} dead-lettered offset "
              f"{record.headers.get('dlq.source.offset', b'?').decode()}: "
              f"{record.headers.get('dlq.error.message', b'').decode()[:90]}")
    run_date = datetime.now(timezone.utc).date() + timedelta(days=45)
    step(f"9. finance's nightly reconciliation, as of {run_date} (every credit due by then)")
    print(f"(the simulated billing system makes these mistakes: {', '.join(DEMO_FAULTS)}, "
          f"each on some of the upgrades)")
    print(reconcile(settings, run_date, progress=False).describe())
    print(f"\nReset reports (who had services switched off): {settings.data_dir / 'reports' / 'resets'}")
    print("Try 'planshift status ord-20261117-0042'. Stop the broker with 'planshift broker stop';")
    print("run the demo again to see replays ignored.")
    return 0


DEMO_FAULTS = {"late-credit": 0.4, "overlap": 0.4, "wrong-amount": 0.4}
DEMO_SEED = "demo-7"  # with the sample upgrades: one credit short, one late, one right


def _approve(settings: Settings, check: dict) -> None:
    from planshift.events import event
    from planshift.kafka import clients

    decision = event(Topic.CREDIT_CHECK_DECIDED, check["tenant_id"], f"{check['upgrade_id']}:decision",
                     upgrade_id=check["upgrade_id"], approved=True,
                     decided_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    with clients.producer(settings) as producer:
        producer.send(settings.topic(Topic.CREDIT_CHECK_DECIDED), key=check["tenant_id"].encode(),
                      value=encode_json(decision),
                      headers=event_headers(Topic.CREDIT_CHECK_DECIDED))


def _invoices_archived(settings: Settings) -> bool:
    """Every switch and credit has its invoice in the lake."""
    import pyarrow.parquet as pq

    lake = Lake.for_settings(settings)

    def rows(topic: str) -> int:
        return sum(pq.read_metadata(path).num_rows for path in lake.files(topic))

    switches = len(read_topic(settings, settings.topic(Topic.BILLING_SWITCH)))
    credits = len(read_topic(settings, settings.topic(Topic.CREDIT_ISSUED)))
    statuses = len(read_topic(settings, settings.topic(Topic.UPGRADE_STATUS)))
    return (rows(Topic.INVOICE_ISSUED) >= switches + credits and rows(Topic.BILLING_SWITCH) >= switches
            and rows(Topic.CREDIT_ISSUED) >= credits and rows(Topic.UPGRADE_STATUS) >= statuses)


def _all_settled(settings: Settings) -> bool:
    """Every upgrade has ended: rejected, completed or failed (the demo approves every credit check)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for record in read_topic(settings, settings.topic(Topic.UPGRADE_STATUS)):
        seen[record.value["upgrade_id"]].add(record.value["status"])
    return bool(seen) and all({"rejected", "completed", "failed"} & names for names in seen.values())
