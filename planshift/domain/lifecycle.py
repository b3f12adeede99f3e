"""The upgrade lifecycle (CONTRACT.md §3, `upgrade.status`): which status may follow which.

    (new) → accepted → [credit_check_pending] → migrating → completed
        ↘ rejected      ↘ rejected                 ↘ failed

`rejected`, `failed` and `completed` are final (r2): nothing — a replay, a re-driven
dead letter, a late batch completion — moves an upgrade out of them or bills it; to try
again, the order system sends a new `upgrade_id`. `migrating` may repeat (progress).
Intake, migration and settlement all ask this module, so the rule is written once.
"""

from __future__ import annotations

from datetime import timedelta

from planshift.contract import Status

ADMIN_LOCK = timedelta(hours=1)  # CONTRACT.md §3: the admin centre is locked at most an hour after migration starts

FINAL = frozenset({Status.REJECTED, Status.FAILED, Status.COMPLETED})

# status (None: not seen yet) → the statuses that may follow it
NEXT: dict[str | None, frozenset[str]] = {
    None: frozenset({Status.ACCEPTED, Status.REJECTED}),
    Status.ACCEPTED: frozenset({Status.CREDIT_CHECK_PENDING, Status.MIGRATING, Status.REJECTED}),
    Status.CREDIT_CHECK_PENDING: frozenset({Status.MIGRATING, Status.REJECTED}),
    Status.MIGRATING: frozenset({Status.MIGRATING, Status.COMPLETED, Status.FAILED}),
    Status.REJECTED: frozenset(),
    Status.FAILED: frozenset(),
    Status.COMPLETED: frozenset(),
}

# How far along each status is; statuses of one upgrade never go down this order.
RANK: dict[str, int] = {
    Status.ACCEPTED: 0, Status.CREDIT_CHECK_PENDING: 1, Status.MIGRATING: 2,
    Status.REJECTED: 3, Status.FAILED: 3, Status.COMPLETED: 3,
}


def is_final(status: str | None) -> bool:
    return status in FINAL


def may_follow(current: str | None, new: str) -> bool:
    """Whether an upgrade at `current` may move to `new`."""
    return new in NEXT.get(current, frozenset())


def is_forward(history: list[str]) -> bool:
    """Whether a sequence of statuses of one upgrade only moves forward (property tests)."""
    current: str | None = None
    for status in history:
        if not may_follow(current, status):
            return False
        current = status
    return True


def take_status(upgrades: dict[str, str], in_flight: str | None, upgrade_id: str,
                status: str) -> tuple[bool, str | None]:
    """A tenant's upgrades (upgrade_id → latest status) and the one in flight, after one
    more status of one upgrade, if the lifecycle allows it: (changed, in flight). The first
    status seen of an upgrade is taken whatever it is (retention may have dropped the ones
    before it). Intake's tenant state and the status view fold `upgrade.status` with it."""
    current = upgrades.get(upgrade_id)
    if current == status or (current is not None and not may_follow(current, status)):
        return False, in_flight
    upgrades[upgrade_id] = status
    if is_final(status):
        if in_flight == upgrade_id:
            in_flight = None
    elif in_flight is None:
        in_flight = upgrade_id
    return True, in_flight
