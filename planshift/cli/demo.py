"""`planshift demo`: the whole path a newcomer can watch, on the embedded defaults.

Start the local broker, create the topics, fill the embedded licence directory with the
sample tenants' users, publish the shipped sample upgrade requests (one breaks its
schema on purpose, one is not JSON), run intake, two migration workers and settlement
over them, and show what came out: each upgrade's statuses with their reasons, the
licence-migration batches, the billing switches and credits, and the dead letters. Running it again publishes the same requests again: intake recognises every
upgrade id and starts nothing twice.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from planshift.broker import LocalBroker
from planshift.contract import Topic, dlq
from planshift.directory import Licence, SqliteDirectory
from planshift.settings import Settings
from planshift.topic_reader import end_offsets, read_topic
from planshift.topics import create_topics

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "sample-upgrade-requests.jsonl"


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
    from consumers import intake, migrate, settle
    from planshift.cli.commands import _publish_with_progress

    file = file or SAMPLES
    step(f"1. local Apache Kafka at {settings.bootstrap_servers}")
    status, started = LocalBroker(settings).start()
    print(("started: " if started else "already running: ") + status.describe())

    step("2. topics of the contract")
    print(create_topics(settings).describe())

    step(f"3. licence directory in {settings.data_dir}")
    print(f"{seed_directory(settings, file)} licences of the sample tenants' users")

    step(f"4. an order system publishes {file.name}")
    report = _publish_with_progress(settings, file)
    for number, message in report.errors:
        print(f"  line {number} refused by the publisher: {message}")
    print(report.describe())
    # The publisher refuses what breaks the schema; an order system that skips it
    # still reaches intake, which dead-letters the record and tells the sender.
    from planshift import kafka_clients
    from planshift.events import with_envelope
    broken = with_envelope(json.loads(file.read_text().splitlines()[0]), Topic.UPGRADE_REQUESTED)
    broken.update(upgrade_id="ord-broken-0001", tenant_id="litware", licenses="many")
    with kafka_clients.producer(settings) as producer:
        producer.send(settings.topic(Topic.UPGRADE_REQUESTED), key=b"litware", value=kafka_clients.encode_json(broken),
                      headers=kafka_clients.event_headers(Topic.UPGRADE_REQUESTED))
    print("and a schema-breaking request (ord-broken-0001) sent without the publisher's check")

    step("5. intake → migration workers → settlement, exactly once")
    ends = end_offsets(settings, settings.topic(Topic.UPGRADE_REQUESTED))
    processors = [intake.processor(settings), migrate.processor(settings, instance="0"),
                  migrate.processor(settings, instance="1"), settle.processor(settings)]
    threads = [threading.Thread(target=p.run, daemon=True) for p in processors]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if processors[0].caught_up(Topic.UPGRADE_REQUESTED, ends) and _all_settled(settings):
            break
        time.sleep(0.3)
    for p in processors:
        p.stop()
    for thread in threads:
        thread.join(60)
    for name, p in zip(("intake", "migrate-0", "migrate-1", "settle"), processors):
        print(f"{name:<10} handled {p.metrics.records:>4} records in {p.metrics.commits} transactions")

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
        print(f"offset {record.headers.get('dlq.source.offset', b'?').decode()}: "
              f"{record.headers.get('dlq.error.message', b'').decode()[:110]}")
    print(f"\nReset reports (who had services switched off): {settings.data_dir / 'reports' / 'resets'}")
    print("Try 'planshift status ord-20261117-0042'. Stop the broker with 'planshift broker stop';")
    print("run the demo again to see replays ignored.")
    return 0


def _all_settled(settings: Settings) -> bool:
    """Every upgrade that started migrating has completed or failed."""
    seen: dict[str, set[str]] = defaultdict(set)
    for record in read_topic(settings, settings.topic(Topic.UPGRADE_STATUS)):
        seen[record.value["upgrade_id"]].add(record.value["status"])
    return all({"completed", "failed"} & names for names in seen.values() if "migrating" in names)
