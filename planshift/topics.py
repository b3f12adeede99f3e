"""Creating the contract's topics (CONTRACT.md §2) and their dead-letter topics, idempotently."""

from __future__ import annotations

from dataclasses import dataclass

from kafka.errors import TopicAlreadyExistsError

from planshift import kafka_clients
from planshift.contract import CONSUMED_TOPICS, DLQ_PARTITIONS, DLQ_RETENTION_MS, TOPICS, Topic, dlq
from planshift.settings import Settings


class TopicsError(RuntimeError):
    pass


@dataclass(frozen=True)
class TopicPlan:
    name: str  # the Kafka name, with the configured prefix
    partitions: int
    configs: dict[str, str]


def planned_topics(settings: Settings) -> list[TopicPlan]:
    plans: list[TopicPlan] = []
    for spec in TOPICS:
        if spec.copartitioned:
            partitions = settings.tenant_partitions
        elif spec.name == Topic.LICENSE_BATCHES:
            partitions = settings.batch_partitions
        else:
            partitions = spec.partitions
        if spec.compacted:
            configs = {"cleanup.policy": "compact"}
        else:
            configs = {"cleanup.policy": "delete", "retention.ms": str(spec.retention_ms)}
        plans.append(TopicPlan(settings.topic(spec.name), partitions, configs))
    for name in CONSUMED_TOPICS:
        plans.append(TopicPlan(settings.topic(dlq(name)), DLQ_PARTITIONS,
                               {"cleanup.policy": "delete", "retention.ms": str(DLQ_RETENTION_MS)}))
    return plans


@dataclass(frozen=True)
class TopicsReport:
    created: list[str]
    existing: list[str]
    mismatched: list[str]  # existing with another partition count than planned

    def describe(self) -> str:
        lines = []
        if self.created:
            lines.append(f"created {len(self.created)} topics: {', '.join(self.created)}")
        if self.existing:
            lines.append(f"{len(self.existing)} topics already exist, unchanged")
        for m in self.mismatched:
            lines.append(f"warning: {m}")
        return "\n".join(lines) or "nothing to do"


def existing_partitions(settings: Settings, names: list[str]) -> dict[str, int]:
    admin = kafka_clients.admin(settings)
    try:
        present = set(admin.list_topics())
        wanted = [n for n in names if n in present]
        if not wanted:
            return {}
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(wanted)}
    finally:
        admin.close()


def create_topics(settings: Settings) -> TopicsReport:
    plans = planned_topics(settings)
    have = existing_partitions(settings, [p.name for p in plans])
    missing = [p for p in plans if p.name not in have]
    created: list[str] = []
    if missing:
        admin = kafka_clients.admin(settings)
        try:
            response = admin.create_topics(
                {p.name: {"num_partitions": p.partitions, "replication_factor": settings.replication_factor,
                          "configs": p.configs} for p in missing},
                raise_errors=False, wait_for_metadata=True,
            )
        finally:
            admin.close()
        for name, code, message in _topic_errors(response):
            if code == 0:
                created.append(name)
            elif code != TopicAlreadyExistsError.errno:  # created meanwhile elsewhere: the same result
                raise TopicsError(f"creating {name} failed: {message or code}")
    mismatched = [
        f"{p.name} has {have[p.name]} partitions, the configuration asks for {p.partitions}"
        for p in plans if p.name in have and have[p.name] != p.partitions
    ]
    return TopicsReport(created, sorted(have), mismatched)


def _topic_errors(response: dict) -> list[tuple[str, int, str | None]]:
    return [(row["name"], row["error_code"], row.get("error_message")) for row in response.get("topics", [])]


def ensure_topic(settings: Settings, name: str, partitions: int, configs: dict[str, str]) -> bool:
    """Create one topic if it is missing (internal topics such as changelogs). True if created."""
    if name in existing_partitions(settings, [name]):
        return False
    admin = kafka_clients.admin(settings)
    try:
        response = admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": settings.replication_factor,
                    "configs": configs}}, raise_errors=False, wait_for_metadata=True)
    finally:
        admin.close()
    for topic, code, message in _topic_errors(response):
        if code not in (0, TopicAlreadyExistsError.errno):
            raise TopicsError(f"creating {topic} failed: {message or code}")
    return True
