"""A cooperative-sticky assignor that keeps co-partitioned topics together.

planshift's intake reads `upgrade.requested`, `credit.check.decided` and
`upgrade.status`, all keyed by `tenant_id` with one partition count, and keeps a
tenant's state in the store of its partition *number*. That only works if partition
*p* of every one of those topics goes to the same instance, as Kafka Streams ensures
for joins. kafka-python's `CooperativeStickyAssignor` balances topic-partitions one by
one and does not promise that, so this assignor runs the same KIP-429 protocol
(members report what they own; a partition that moves is first revoked by its owner,
then given to its new owner in a second round) over partition *numbers*, and gives
each member partition *p* of every subscribed topic that has one.
"""

from __future__ import annotations

from collections import defaultdict

from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment


class CopartitionedCooperativeStickyAssignor(CooperativeStickyAssignor):
    name = "planshift-copartitioned-cooperative-sticky"

    def assign(self, cluster, members):
        subscriptions = {m.member_id: list(m.metadata.topics) for m in members}
        topics = sorted({t for ts in subscriptions.values() for t in ts})
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in topics}
        numbers = range(max(counts.values(), default=0))

        # Who owns which partition number now (a member owns p if it owns p of any topic).
        current: dict[int, str] = {}
        for member in members:
            for owned in getattr(member.metadata, "owned_partitions", None) or ():
                for p in owned.partitions:
                    current.setdefault(p, member.member_id)

        member_ids = sorted(subscriptions)
        final = _sticky_balance(list(numbers), member_ids, current)

        assignments = {}
        for member_id in member_ids:
            by_topic = defaultdict(list)
            for p in final[member_id]:
                owner = current.get(p)
                if owner is not None and owner != member_id:
                    continue  # moving: its owner revokes it first; it lands here next round
                for topic in subscriptions[member_id]:
                    if p < counts[topic]:
                        by_topic[topic].append(p)
            assignments[member_id] = ConsumerProtocolAssignment(
                self.version, sorted((t, sorted(ps)) for t, ps in by_topic.items()), b"")
        return assignments


def _sticky_balance(numbers: list[int], member_ids: list[str], current: dict[int, str]) -> dict[str, list[int]]:
    """Balanced (sizes differ by at most one) and keeping current owners where it can."""
    result: dict[str, list[int]] = {m: [] for m in member_ids}
    if not member_ids:
        return result
    base, extra = divmod(len(numbers), len(member_ids))
    # Members that already own the most keep the larger quotas: fewer moves.
    by_owned = sorted(member_ids, key=lambda m: (-sum(1 for o in current.values() if o == m), m))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(by_owned)}
    free: list[int] = []
    for p in numbers:
        owner = current.get(p)
        if owner in result and len(result[owner]) < quota[owner]:
            result[owner].append(p)
        else:
            free.append(p)
    for p in free:
        member = next(m for m in by_owned if len(result[m]) < quota[m])
        result[member].append(p)
    return result
