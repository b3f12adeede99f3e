"""Settlement's decisions (CONTRACT.md §4, Settlement), pure.

Settlement keeps one `Migration` per upgrade: which batches are in (a bitmap, so a
repeated completion is recognised), how many users moved, how many had settings reset,
and how far the progress reports have got. `take` folds one `license.batch.completed`
into it and says what to do next; `settle` computes what the last completion settles:
the effective date, the credit and its due date. The consumer (`consumers/settle.py`)
does the emitting and the directory work.

An upgrade that is final (`completed` or `failed`) takes nothing in any more: a batch
re-driven after its upgrade failed, or a completion replayed after settlement, is
ignored, so nothing bills a failed upgrade or bills one twice (r2: terminal statuses are
final).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, timedelta
from enum import Enum
from typing import Any, Mapping

from planshift.contract import Status
from planshift.domain.lifecycle import is_final
from planshift.domain.money import Credit, subscription_credit
from planshift.domain.validity import utc_day

CREDIT_DUE = timedelta(days=30)  # CONTRACT.md §3: the credit must be on an invoice by effective_date + 30 days
PROGRESS_STEPS = 10  # at most ten progress reports per upgrade


class Next(Enum):
    IGNORE = "ignore"  # a repeat, or the upgrade is final
    RECORD = "record"  # counted; nothing to report
    REPORT_PROGRESS = "report_progress"  # another tenth of the batches is in
    SETTLE = "settle"  # every batch is in
    FAIL = "fail"  # a batch failed for good: the upgrade fails


@dataclass(frozen=True)
class Migration:
    """One upgrade's migration as settlement sees it."""

    status: str = Status.MIGRATING
    tenant_id: str | None = None
    done: int = 0  # bit n set: batch n is in
    batches_done: int = 0
    users_done: int = 0
    step: int = 0  # progress reports made

    @classmethod
    def from_state(cls, raw: Mapping[str, Any] | str | None) -> "Migration":
        if not raw:
            return cls()
        if isinstance(raw, str):  # a final upgrade: "{status}:{tenant_id}"
            status, tenant_id = raw.split(":", 1)
            return cls(status=status, tenant_id=tenant_id)
        if raw.get("settled"):  # written before statuses were kept here
            return cls(status=Status.COMPLETED)
        return cls(status=raw.get("status", Status.MIGRATING), tenant_id=raw.get("tenant_id"),
                   done=int(raw.get("done", "0"), 16), batches_done=raw.get("batches_done", 0),
                   users_done=raw.get("users_done", 0), step=raw.get("step", 0))

    def as_state(self) -> dict[str, Any] | str:
        if is_final(self.status):
            # The counts are in the final status. Kept for weeks, by the million: one short
            # string (about 300 bytes less in memory than a dict of two).
            return f"{self.status}:{self.tenant_id}"
        return {"status": self.status, "tenant_id": self.tenant_id, "done": format(self.done, "x"),
                "batches_done": self.batches_done, "users_done": self.users_done,
                "step": self.step}


def take(migration: Migration, completion: Mapping[str, Any]) -> tuple[Migration, Next]:
    """Fold one batch completion (or failure) into an upgrade's migration."""
    if is_final(migration.status):
        return migration, Next.IGNORE
    if migration.tenant_id is None:
        migration = replace(migration, tenant_id=completion["tenant_id"])
    if completion.get("outcome") == "failed":
        return replace(migration, status=Status.FAILED), Next.FAIL
    batch_no, batch_count = completion["batch_no"], completion["batch_count"]
    if migration.done >> batch_no & 1:
        return migration, Next.IGNORE
    migration = replace(
        migration,
        done=migration.done | 1 << batch_no,
        batches_done=migration.batches_done + 1,
        users_done=migration.users_done + completion["users_migrated"] + completion["users_already_migrated"],
    )
    if migration.batches_done >= batch_count:
        return migration, Next.SETTLE
    step = migration.batches_done * PROGRESS_STEPS // batch_count
    if step > migration.step:
        return replace(migration, step=step), Next.REPORT_PROGRESS
    return migration, Next.RECORD


@dataclass(frozen=True)
class Settled:
    effective_date: date
    credit: Credit
    credit_due_by: date


def settle(terms: Mapping[str, Any], last_completion: Mapping[str, Any]) -> Settled:
    """What the last completion settles. `effective_date` is the UTC day of the last
    completion (so a replay of the completions settles on the same day)."""
    effective = utc_day(last_completion["occurred_at"])
    credit = subscription_credit(terms, effective, terms["new_total_cost_minor"])
    return Settled(effective, credit, effective + CREDIT_DUE)


def progress(migration: Migration, batch_count: int, users_total: int) -> dict[str, int]:
    """`upgrade.status.progress` (users who joined late count in both done and total)."""
    return {"batches_done": migration.batches_done, "batch_count": batch_count,
            "users_done": migration.users_done, "users_total": max(users_total, migration.users_done)}
