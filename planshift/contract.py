"""The names of CONTRACT.md, defined once: topics, event types, statuses, reason codes.

Every other module spells a topic, an event type or a reason code through these
constants, so a grep for a name in the contract lands here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

SCHEMA_VERSION = 1


class Topic(StrEnum):
    """CONTRACT.md §2. The value is the Kafka topic name and the event type."""

    UPGRADE_REQUESTED = "upgrade.requested"
    SERVICE_HEALTH = "service.health"
    CREDIT_CHECK_DECIDED = "credit.check.decided"
    INVOICE_ISSUED = "invoice.issued"
    UPGRADE_STATUS = "upgrade.status"
    CREDIT_CHECK_REQUESTED = "credit.check.requested"
    LICENSE_BATCHES = "license.batches"
    LICENSE_BATCH_COMPLETED = "license.batch.completed"
    BILLING_SWITCH = "billing.switch"
    CREDIT_ISSUED = "credit.issued"
    UPGRADE_ENDED = "upgrade.ended"


def dlq(topic: str) -> str:
    """The dead-letter topic of `topic` (CONTRACT.md §7)."""
    return f"{topic}.dlq"


DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    partitions: int
    retention_ms: int | None  # None: compacted
    copartitioned: bool = False  # keyed by tenant_id and read together by intake

    @property
    def compacted(self) -> bool:
        return self.retention_ms is None


# CONTRACT.md §2, in its order. `partitions` are the defaults; the tenant-keyed
# topics that intake reads together always share one count (co-partitioning).
TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(Topic.UPGRADE_REQUESTED, "tenant_id", 6, 14 * DAY_MS, copartitioned=True),
    TopicSpec(Topic.SERVICE_HEALTH, "service", 1, None),
    TopicSpec(Topic.CREDIT_CHECK_DECIDED, "tenant_id", 6, 14 * DAY_MS, copartitioned=True),
    TopicSpec(Topic.INVOICE_ISSUED, "tenant_id", 6, 90 * DAY_MS),
    TopicSpec(Topic.UPGRADE_STATUS, "tenant_id", 6, 30 * DAY_MS, copartitioned=True),
    TopicSpec(Topic.CREDIT_CHECK_REQUESTED, "tenant_id", 6, 14 * DAY_MS),
    TopicSpec(Topic.LICENSE_BATCHES, "{upgrade_id}:{batch_no}", 12, 7 * DAY_MS),
    TopicSpec(Topic.LICENSE_BATCH_COMPLETED, "upgrade_id", 6, 7 * DAY_MS),
    TopicSpec(Topic.BILLING_SWITCH, "tenant_id", 6, 90 * DAY_MS),
    TopicSpec(Topic.CREDIT_ISSUED, "tenant_id", 6, 90 * DAY_MS),
    # Beyond §2 (docs/CONTRACT.md, refinement 17): internal, written beside the
    # `completed`/`failed` status so intake learns an upgrade ended without reading
    # every status back.
    TopicSpec(Topic.UPGRADE_ENDED, "tenant_id", 6, 30 * DAY_MS, copartitioned=True),
)

DLQ_PARTITIONS = 1
# Beyond §7 (docs/CONTRACT.md, refinement 28): the dead letters re-driven, keyed
# `TOPIC:PARTITION:OFFSET`, compacted, so none is re-driven twice by accident.
REDRIVEN_TOPIC = "dlq.redriven"
DLQ_RETENTION_MS = 30 * DAY_MS

# Kafka deletes a log segment once its newest record is older than the topic's retention,
# and rolls a segment every `segment.ms` (7 days by default), so a record can outlive its
# topic's retention by up to that long: a reader can meet it again until then.
SEGMENT_MS = 7 * DAY_MS


def lifetime_ms(topic: str) -> int:
    """The longest a record of `topic` (a contract topic or its `.dlq`) can still be read
    after it was written: its retention and one segment. (Compacted topics keep a key's
    last record for good.)"""
    if topic.endswith(".dlq"):
        return DLQ_RETENTION_MS + SEGMENT_MS
    spec = next((t for t in TOPICS if t.name == topic), None)
    if spec is None or spec.retention_ms is None:
        raise ValueError(f"{topic} is not a contract topic with a retention: its records have no lifetime")
    return spec.retention_ms + SEGMENT_MS

# Topics planshift reads, so each has a dead-letter topic (CONTRACT.md §7).
CONSUMED_TOPICS: tuple[str, ...] = (
    Topic.UPGRADE_REQUESTED,
    Topic.SERVICE_HEALTH,
    Topic.CREDIT_CHECK_DECIDED,
    Topic.INVOICE_ISSUED,
    Topic.LICENSE_BATCHES,
    Topic.LICENSE_BATCH_COMPLETED,
    Topic.BILLING_SWITCH,
    Topic.CREDIT_ISSUED,
    Topic.UPGRADE_STATUS,
    Topic.UPGRADE_ENDED,
)


class Status(StrEnum):
    """`upgrade.status.status`; an upgrade's statuses only move forward."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    CREDIT_CHECK_PENDING = "credit_check_pending"
    MIGRATING = "migrating"
    COMPLETED = "completed"
    FAILED = "failed"


TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.REJECTED, Status.FAILED})


class Remedy(StrEnum):
    MANUAL_CHANGE = "MANUAL_CHANGE"
    RESOLVE_LICENSE_CONFLICT = "RESOLVE_LICENSE_CONFLICT"
    BUY_MORE_LICENSES = "BUY_MORE_LICENSES"
    RETRY_LATER = "RETRY_LATER"
    CONSOLIDATE_PLANS = "CONSOLIDATE_PLANS"
    ACKNOWLEDGE_FORFEIT = "ACKNOWLEDGE_FORFEIT"
    REMOVE_ADD_ON = "REMOVE_ADD_ON"
    PAY_BALANCE = "PAY_BALANCE"
    FIX_REQUEST = "FIX_REQUEST"
    CONTACT_SUPPORT = "CONTACT_SUPPORT"


@dataclass(frozen=True)
class ReasonSpec:
    code: str
    remedy: Remedy
    retry_after: str | None
    message: str


# CONTRACT.md §4, eligibility table, in the contract's order: a rejection lists its
# failing reasons in this order.
REASONS: tuple[ReasonSpec, ...] = (
    ReasonSpec("NOT_ELIGIBLE", Remedy.MANUAL_CHANGE, None,
               "This subscription isn't eligible for an upgrade right now."),
    ReasonSpec("MORE_USERS_THAN_LICENSES", Remedy.RESOLVE_LICENSE_CONFLICT, None,
               "More users hold a licence of this subscription than it has licences."),
    ReasonSpec("LICENSES_BELOW_ASSIGNED_USERS", Remedy.BUY_MORE_LICENSES, None,
               "The order buys fewer licences than there are users to move."),
    ReasonSpec("NOT_FULLY_SET_UP_OR_SERVICE_UNAVAILABLE", Remedy.RETRY_LATER, "PT3H",
               "The subscription isn't fully set up yet, or a service has an incident."),
    ReasonSpec("CHANGE_IN_PROGRESS_OR_CREDIT_CHECK_PENDING", Remedy.RETRY_LATER, "PT1H",
               "Another plan is being upgraded or a credit check is pending."),
    ReasonSpec("MULTIPLE_PLANS_SAME_PRODUCT", Remedy.CONSOLIDATE_PLANS, None,
               "The tenant has two or more plans for the same product."),
    ReasonSpec("PREPAID_PLAN", Remedy.MANUAL_CHANGE, None,
               "Prepaid plans can't be upgraded automatically."),
    ReasonSpec("PREPAID_FORFEIT_NOT_ACKNOWLEDGED", Remedy.ACKNOWLEDGE_FORFEIT, None,
               "Part of the prepaid time would be forfeited; acknowledge it at checkout."),
    ReasonSpec("GOVERNMENT_OR_NONPROFIT", Remedy.MANUAL_CHANGE, None,
               "Government and non-profit plans can't be upgraded automatically."),
    ReasonSpec("TEMPORARY_HIGH_VOLUME", Remedy.RETRY_LATER, "PT1H",
               "The service is upgrading a high volume of plans; try again in about an hour."),
    ReasonSpec("TARGET_PLAN_NOT_SUPPORTED", Remedy.MANUAL_CHANGE, None,
               "The target plan has fewer services than the current plan; change plans by hand."),
    ReasonSpec("HAS_ADD_ON", Remedy.REMOVE_ADD_ON, None,
               "The subscription has an add-on; remove it first."),
    ReasonSpec("UNPAID_BALANCE", Remedy.PAY_BALANCE, None,
               "The account has an unpaid balance; pay it, then retry."),
    ReasonSpec("INVALID_REQUEST", Remedy.FIX_REQUEST, None,
               "The request breaks its schema or is impossible."),
    ReasonSpec("CREDIT_CHECK_DECLINED", Remedy.CONTACT_SUPPORT, None,
               "The credit check was not approved."),
    ReasonSpec("CREDIT_CHECK_EXPIRED", Remedy.RETRY_LATER, None,
               "The credit check was not answered in time."),
)

# Reasons planshift adds for what happens after acceptance (docs/CONTRACT.md, refinements).
OPERATIONAL_REASONS: tuple[ReasonSpec, ...] = (
    ReasonSpec("MIGRATION_FAILED", Remedy.CONTACT_SUPPORT, None,
               "Moving the users to the new plan failed; they keep their current plan."),
    ReasonSpec("SETTLEMENT_FAILED", Remedy.CONTACT_SUPPORT, None,
               "The users were moved to the new plan, but switching the billing failed; "
               "support finishes it by hand."),
)

REASON_BY_CODE: dict[str, ReasonSpec] = {r.code: r for r in REASONS + OPERATIONAL_REASONS}
REASON_ORDER: dict[str, int] = {r.code: i for i, r in enumerate(REASONS)}

# Deterministic ids (CONTRACT.md §1): a replay can never mint a new one.


def credit_id(upgrade_id: str) -> str:
    return f"{upgrade_id}:credit"


def billing_switch_id(upgrade_id: str) -> str:
    return f"{upgrade_id}:billing-switch"


def batch_id(upgrade_id: str, batch_no: int) -> str:
    return f"{upgrade_id}:batch:{batch_no}"


def batch_key(upgrade_id: str, batch_no: int) -> str:
    return f"{upgrade_id}:{batch_no}"


def status_id(upgrade_id: str, status: str, step: int | None = None) -> str:
    """upgrade.status event ids: one per status, and per progress step while migrating."""
    return f"{upgrade_id}:status:{status}" if step is None else f"{upgrade_id}:status:{status}:{step}"
