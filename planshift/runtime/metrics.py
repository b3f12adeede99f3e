"""What a processor counts, kept as plain numbers on its own thread.

The loop only adds to these; `telemetry.py` reads them when Prometheus scrapes, so the
hot path pays a dictionary update, not a lock. Business outcomes (upgrades by status,
batches and users migrated, credits issued, billing switches, dead letters) are counted
from what the engine sends, per transaction: they join the totals when the transaction
commits and are dropped when it aborts, so a record handled again after an abort is not
counted twice, just as its outputs are not delivered twice.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from planshift.contract import Topic

# Seconds. The handler's buckets start well below a millisecond: most records take tens
# of microseconds; a licence batch takes tens of milliseconds to seconds.
HANDLER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)
COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RESTORE_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Histogram:
    """Counts per bucket (upper bounds, `le`), their sum and count, as Prometheus keeps them."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, observations at or below it)], ending with +Inf, for the exposition format."""
        out, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), list(self.counts)):
            running += count
            out.append((bound, running))
        return out


# What the engine's outputs say happened, counted per transaction: (name, label) → amount.
Tally = dict[tuple[str, str], float]


def tally_output(pending: Tally, topic: str, value: dict[str, Any]) -> None:
    """Count one output event (contract topic) towards its transaction's outcomes."""
    if topic == Topic.UPGRADE_STATUS:
        key = ("upgrades", str(value.get("status")))
        pending[key] = pending.get(key, 0) + 1
    elif topic == Topic.CREDIT_ISSUED:
        currency = str(value.get("currency"))
        pending[("credits", currency)] = pending.get(("credits", currency), 0) + 1
        pending[("credited_minor", currency)] = pending.get(("credited_minor", currency), 0) \
            + int(value.get("amount_minor") or 0)
    elif topic == Topic.LICENSE_BATCH_COMPLETED:
        key = ("batches", str(value.get("outcome")))
        pending[key] = pending.get(key, 0) + 1
        pending[("users_migrated", "")] = pending.get(("users_migrated", ""), 0) + int(value.get("users_migrated") or 0)
    elif topic == Topic.BILLING_SWITCH:
        pending[("billing_switches", "")] = pending.get(("billing_switches", ""), 0) + 1


TALLIED = frozenset({Topic.UPGRADE_STATUS, Topic.CREDIT_ISSUED, Topic.LICENSE_BATCH_COMPLETED, Topic.BILLING_SWITCH})


@dataclass
class Metrics:
    records: int = 0
    records_by_topic: dict[str, int] = field(default_factory=dict)  # contract topic → records taken in
    dead_letters: int = 0
    retries: int = 0
    commits: int = 0
    aborts: int = 0
    restored_keys: int = 0
    restore_seconds: float = 0.0  # time spent restoring, summed over restorations
    expired_keys: int = 0
    timers_fired: int = 0
    started_at: float = field(default_factory=time.monotonic)
    first_record_at: float | None = None  # throughput is measured from here, after start-up
    finished_at: float | None = None
    # Outcomes of committed transactions, and of the open one (see the module's docstring).
    outcomes: Tally = field(default_factory=dict)
    pending: Tally = field(default_factory=dict)
    handler_seconds: dict[str, Histogram] = field(default_factory=dict)  # contract topic → its handler's time
    commit_seconds: Histogram = field(default_factory=lambda: Histogram(COMMIT_BUCKETS))
    restores: Histogram = field(default_factory=lambda: Histogram(RESTORE_BUCKETS))  # seconds per restoration
    rebalances: dict[str, int] = field(default_factory=dict)  # assigned | revoked | lost → times
    # Measured by the loop every few seconds: (cluster topic, partition) → records behind
    # the end, and the consumer's own gauges: (name, label) → value.
    lag: dict[tuple[str, int], int] = field(default_factory=dict)
    gauges: dict[tuple[str, str], float] = field(default_factory=dict)

    def count_dead_letter(self, topic: str) -> None:
        self.dead_letters += 1
        key = ("dead_letters", topic)
        self.pending[key] = self.pending.get(key, 0) + 1

    def committed(self) -> None:
        """The open transaction committed: its outcomes count."""
        if self.pending:
            outcomes = dict(self.outcomes)
            for key, amount in self.pending.items():
                outcomes[key] = outcomes.get(key, 0) + amount
            self.outcomes = outcomes  # replaced whole, so a scrape never sees it half updated
            self.pending.clear()

    def dropped(self) -> None:
        """The open transaction was aborted: its outcomes never happened."""
        self.pending.clear()

    def handler_histogram(self, topic: str) -> Histogram:
        histogram = self.handler_seconds.get(topic)
        if histogram is None:
            histogram = self.handler_seconds[topic] = Histogram(HANDLER_BUCKETS)
        return histogram
