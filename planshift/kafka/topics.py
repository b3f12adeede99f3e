"""Creating the contract's topics (CONTRACT.md §2) and their dead-letter topics, idempotently."""

from __future__ import annotations

from dataclasses import dataclass

from kafka.errors import AuthorizationError, TopicAlreadyExistsError

from planshift.contract import (
    CONSUMED_TOPICS,
    DLQ_PARTITIONS,
    DLQ_RETENTION_MS,
    TOPICS,
    Topic,
    REDRIVEN_TOPIC,
    dlq,
)
from planshift.kafka import clients
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
    # Which dead letters were re-driven, for good (`planshift/ops/deadletters.py`).
    plans.append(TopicPlan(settings.topic(REDRIVEN_TOPIC), 1, {"cleanup.policy": "compact"}))
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
    admin = clients.admin(settings)
    try:
        present = set(admin.list_topics())
        wanted = [n for n in names if n in present]
        if not wanted:
            return {}
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(wanted)}
    finally:
        admin.close()


def _create(settings: Settings, plans: list[TopicPlan]) -> list[str]:
    """Create the planned topics; return those created here (one created meanwhile elsewhere is the same result)."""
    if not plans:
        return []
    from kafka.errors import for_code

    admin = clients.admin(settings)
    try:
        response = admin.create_topics(
            {p.name: {"num_partitions": p.partitions, "replication_factor": settings.replication_factor,
                      "configs": p.configs} for p in plans},
            raise_errors=False,
        )
        created = []
        for row in response.get("topics", []):
            if row["error_code"] == 0:
                created.append(row["name"])
            elif row["error_code"] != TopicAlreadyExistsError.errno:
                error = for_code(row["error_code"])
                if issubclass(error, AuthorizationError):  # a role without the right: one line at the CLI
                    raise error(f"creating topic {row['name']}")
                raise TopicsError(f"creating {row['name']} failed: {row.get('error_message') or row['error_code']}")
        # Visible with a leader on every partition before anyone uses them.
        admin.wait_for_topics(created)
    finally:
        admin.close()
    return created


def create_topics(settings: Settings) -> TopicsReport:
    plans = planned_topics(settings)
    have = existing_partitions(settings, [p.name for p in plans])
    created = _create(settings, [p for p in plans if p.name not in have])
    mismatched = [
        f"{p.name} has {have[p.name]} partitions, the configuration asks for {p.partitions}"
        for p in plans if p.name in have and have[p.name] != p.partitions
    ]
    return TopicsReport(created, sorted(have), mismatched)


def ensure_topic(settings: Settings, name: str, partitions: int, configs: dict[str, str]) -> bool:
    """Create one topic if it is missing (internal topics such as changelogs). True if created."""
    if name in existing_partitions(settings, [name]):
        return False
    _create(settings, [TopicPlan(name, partitions, configs)])
    return True
