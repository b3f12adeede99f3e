"""An upgrade preview (issue 17, part 3): what intake and settlement would decide for a
would-be request, before the order system checks out — like Stripe's invoice preview.

Pure: the same rules intake and settlement run (validity, every eligibility rule, the
credit-check gate, the credit by the contract's money rules, batch planning), on what the
caller read for it (holders, service health, the tenant's upgrade in flight, whether the
id is taken). Nothing is published and nothing changes; `planshift preview` is its edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Mapping

from planshift.catalogue import Catalogue
from planshift.domain.credit_check import add_business_days, credit_check_reason, decision_due_by
from planshift.domain.eligibility import TenantView, evaluate, reason, request_date, source_subscription
from planshift.domain.money import subscription_credit
from planshift.domain.settlement import CREDIT_DUE
from planshift.domain.validity import request_violations
from planshift.schema import InvalidEvent, validate


@dataclass(frozen=True)
class Preview:
    verdict: str  # accepted | credit_check | rejected | repeat | taken
    reasons: list[dict[str, Any]] = field(default_factory=list)
    credit_check: dict[str, str] | None = None  # {"reason", "due_by", "expires_after"}
    credit: dict[str, Any] | None = None  # if it completed today: amount, basis, days, forfeit, due_by
    batches: int = 0
    users: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": self.reasons, "credit_check": self.credit_check,
                "credit_if_completed_today": self.credit, "batches": self.batches, "users": self.users}


def preview(request: Mapping[str, Any], tenant: TenantView, catalogue: Catalogue, today: date, *,
            batch_size: int, credit_check_threshold_minor: int, credit_check_expiry_days: int,
            known: str | None = None) -> Preview:
    """`known`: "repeat" when the tenant used this upgrade_id before, "taken" when another
    tenant did (intake ignores the first and dead-letters the second)."""
    try:
        validate("upgrade.requested", dict(request))
    except InvalidEvent as exc:
        return Preview("rejected", [reason("INVALID_REQUEST", "; ".join(map(str, exc.violations))).as_dict()])
    violations = request_violations(request)
    if violations:
        return Preview("rejected", [reason("INVALID_REQUEST", "; ".join(map(str, violations))).as_dict()])
    if known in ("repeat", "taken"):
        return Preview(known)
    users = tenant.license_holders
    reasons = evaluate(request, tenant, catalogue)
    if reasons:
        return Preview("rejected", [r.as_dict() for r in reasons], users=users)
    check = credit_check_reason(request, credit_check_threshold_minor)
    gate = None
    if check is not None:
        day = request_date(request)
        gate = {"reason": check, "due_by": decision_due_by(day).isoformat(),
                "expires_after": add_business_days(day, credit_check_expiry_days).isoformat()}
    credit = subscription_credit(source_subscription(request), today, request["new_total_cost_minor"])
    owed = {"amount_minor": credit.amount_minor, "currency": request["currency"], "basis": credit.basis,
            "unused_days": credit.unused_days, "period_days": credit.period_days,
            "forfeit_minor": credit.forfeit_minor, "due_by": (today + CREDIT_DUE).isoformat()}
    return Preview("credit_check" if gate else "accepted", [], gate, owed,
                   max(1, math.ceil(users / batch_size)), users)
