"""`planshift topics create`: every topic of CONTRACT.md §2 and the dead-letter topics, idempotently."""

from __future__ import annotations

from kafka.admin import ConfigResource, ConfigResourceType

from planshift.contract import CONSUMED_TOPICS, REDRIVEN_TOPIC, TOPICS, dlq
from planshift.kafka import clients
from planshift.kafka.topics import create_topics, existing_partitions, planned_topics


def test_create_twice_creates_once(kafka_broker, broker_settings, unique_name):
    settings = broker_settings.with_(topic_prefix=f"{unique_name('p')}.")
    first = create_topics(settings)
    expected = {settings.topic(s.name) for s in TOPICS} | {settings.topic(dlq(t)) for t in CONSUMED_TOPICS} \
        | {settings.topic(REDRIVEN_TOPIC)}
    assert set(first.created) == expected and first.existing == []

    second = create_topics(settings)
    assert second.created == [] and set(second.existing) == expected
    assert "already exist, unchanged" in second.describe()


def test_partitions_and_retention_follow_the_contract(settings):
    plans = {p.name: p for p in planned_topics(settings)}
    have = existing_partitions(settings, list(plans))
    contract = {s.name: s for s in TOPICS}
    for spec in TOPICS:
        assert have[settings.topic(spec.name)] == spec.partitions, spec.name
    for name in CONSUMED_TOPICS:
        assert have[settings.topic(dlq(name))] == 1

    admin = clients.admin(settings)
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, settings.topic(n)) for n in
                     ("service.health", "upgrade.requested", "invoice.issued", "upgrade.requested.dlq")]
        described = admin.describe_configs(resources)
    finally:
        admin.close()
    configs = {name: {key: data["value"] for key, data in values.items()}
               for values_by_name in described.values() for name, values in values_by_name.items()}
    assert configs[settings.topic("service.health")]["cleanup.policy"] == "compact"
    assert configs[settings.topic("upgrade.requested")]["retention.ms"] == str(14 * 86_400_000)
    assert configs[settings.topic("invoice.issued")]["retention.ms"] == str(90 * 86_400_000)
    assert configs[settings.topic("upgrade.requested.dlq")]["retention.ms"] == str(30 * 86_400_000)
    assert contract["service.health"].compacted


def test_copartitioned_topics_share_a_configurable_count(kafka_broker, broker_settings, unique_name):
    settings = broker_settings.with_(topic_prefix=f"{unique_name('p')}.", tenant_partitions=3)
    create_topics(settings)
    have = existing_partitions(settings, [settings.topic(s.name) for s in TOPICS if s.copartitioned])
    assert set(have.values()) == {3} and len(have) == 4  # requested, decided, status, ended


def test_a_mismatched_existing_topic_is_reported(kafka_broker, broker_settings, unique_name):
    settings = broker_settings.with_(topic_prefix=f"{unique_name('p')}.")
    create_topics(settings)
    report = create_topics(settings.with_(tenant_partitions=4))
    assert any("upgrade.requested has 6 partitions" in m and "asks for 4" in m for m in report.mismatched)
