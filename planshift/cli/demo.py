"""`planshift demo`: the whole path a newcomer can watch, on the embedded defaults.

Today: start the local broker, create the topics, publish the shipped sample upgrade
requests (one of them invalid on purpose, one not JSON) and read back what Kafka holds.
"""

from __future__ import annotations

from pathlib import Path

from planshift.broker import LocalBroker
from planshift.contract import Topic
from planshift.settings import Settings
from planshift.topic_reader import read_topic
from planshift.topics import create_topics

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "sample-upgrade-requests.jsonl"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(settings: Settings, file: Path | None = None) -> int:
    from planshift.cli.commands import _publish_with_progress

    file = file or SAMPLES
    step(f"1. local Apache Kafka at {settings.bootstrap_servers}")
    status, started = LocalBroker(settings).start()
    print(("started: " if started else "already running: ") + status.describe())

    step("2. topics of the contract")
    print(create_topics(settings).describe())

    step(f"3. an order system publishes {file.name}")
    report = _publish_with_progress(settings, file)
    for number, message in report.errors:
        print(f"  line {number} refused: {message}")
    print(report.describe())

    topic = settings.topic(Topic.UPGRADE_REQUESTED)
    step(f"4. read back from {topic} (read_committed)")
    records = read_topic(settings, topic)
    print(f"{'partition':>9} {'offset':>6}  {'tenant':<12} {'upgrade':<20} {'from → to'}")
    for r in records:
        v = r.value
        source = next((s["sku"] for s in v["tenant"]["subscriptions"]
                       if s["subscription_id"] == v["source_subscription_id"]), "?")
        print(f"{r.partition:>9} {r.offset:>6}  {v['tenant_id']:<12} {v['upgrade_id']:<20} {source} → {v['target_sku']}")
    print(f"\n{len(records)} upgrade requests on {topic}. Stop the broker with 'planshift broker stop'.")
    return 0
