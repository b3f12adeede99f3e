"""`planshift status UPGRADE_ID`: the admin's 'Check upgrade status'."""

from __future__ import annotations

import argparse

from cli.args import fail
from planshift.settings import Settings


def register(sub) -> None:
    status = sub.add_parser("status", help="an upgrade's state, reasons and progress (the admin's 'Check upgrade status')")
    status.add_argument("upgrade_id", metavar="UPGRADE_ID")
    status.add_argument("--timeout", type=float, default=30.0, help="seconds to read upgrade.status before giving up")
    status.set_defaults(handler=show_status)


def show_status(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.contract import Topic
    from planshift.kafka.reader import iter_topic

    events = [r.value for r in iter_topic(settings, settings.topic(Topic.UPGRADE_STATUS), timeout=args.timeout)
              if isinstance(r.value, dict) and r.value.get("upgrade_id") == args.upgrade_id]
    if not events:
        return fail(f"no status for upgrade {args.upgrade_id} on {settings.topic(Topic.UPGRADE_STATUS)}")
    print(describe_status(events))
    return 0


def describe_status(events: list[dict]) -> str:
    """The admin's view of one upgrade from its status events, oldest first."""
    latest = events[-1]
    lines = [f"upgrade {latest['upgrade_id']} of {latest['tenant_id']}: {latest['status'].upper()}",
             "history: " + " → ".join(dict.fromkeys(e["status"] for e in events))]
    progress = next((e["progress"] for e in reversed(events) if e.get("progress")), None)
    if progress:
        total = progress["users_total"] or 1
        done = progress["users_done"] if latest["status"] != "completed" else progress["users_total"]
        filled = int(30 * done / total) if progress["users_total"] else 30
        lines.append(f"progress: [{'#' * filled}{'.' * (30 - filled)}] {done}/{progress['users_total']} users, "
                     f"{progress['batches_done']}/{progress['batch_count']} batches")
    if latest.get("admin_locked_until"):
        lines.append(f"admin centre locked until {latest['admin_locked_until']}")
    check = latest.get("credit_check") if latest["status"] == "credit_check_pending" else None
    if check:
        why = {"INVOICE_PAYMENT": "paying by invoice", "COST_THRESHOLD": "the order's cost"}.get(check["reason"],
                                                                                                check["reason"])
        lines.append(f"credit check pending ({why}), due by {check['due_by']}; users keep their current plan "
                     "meanwhile")
    for reason in latest.get("reasons") or []:
        retry = f"; retry after {reason['retry_after']}" if reason.get("retry_after") else ""
        lines.append(f"reason {reason['code']}: {reason['message']} (remedy {reason['remedy']}{retry})")
    if latest["status"] == "completed":
        lines.append(f"new subscription {latest.get('new_subscription_id')}; credit {latest.get('credit_minor')} "
                     f"{latest.get('currency')} minor units, forfeited {latest.get('forfeit_minor')}; "
                     f"{latest.get('service_plan_resets')} users had per-service settings reset")
    return "\n".join(lines)
