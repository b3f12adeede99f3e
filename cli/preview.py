"""`planshift preview REQUEST.json`: what planshift would decide for a request, before it is sent."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from planshift.settings import Settings


def register(sub) -> None:
    preview = sub.add_parser(
        "preview", help="what intake would decide for a request, and what it would credit: nothing is sent",
        description="Runs intake's rules on a would-be upgrade.requested (validity, every eligibility rule with "
                    "the directory's holders, the current service health and the tenant's upgrade in flight, the "
                    "credit-check gate) and settlement's money rules as if it completed today. Reads upgrade.status "
                    "and service.health (read_committed) and the licence directory; publishes and changes nothing.")
    preview.add_argument("file", help="the request as JSON (the event, envelope included), or - for stdin")
    preview.add_argument("--json", action="store_true", help="print the preview as one JSON object")
    preview.set_defaults(handler=run_preview)


def run_preview(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import datetime, timezone

    from cli.args import fail
    from consumers.intake import TenantState, fold_status
    from planshift.catalogue import Catalogue
    from planshift.contract import Topic
    from planshift.domain.eligibility import TenantView
    from planshift.domain.preview import preview
    from planshift.kafka.reader import iter_topic
    from planshift.runtime.state import PartitionStore
    from planshift.storage.directory import open_directory

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as exc:
        return fail(f"{args.file}: {exc.strerror}", 2)
    try:
        request = json.loads(text)
    except json.JSONDecodeError as exc:
        return fail(f"{args.file}: not JSON: {exc.msg} at line {exc.lineno}")
    if not isinstance(request, dict):
        return fail(f"{args.file}: not a JSON object")
    tenant_id, upgrade_id = request.get("tenant_id"), request.get("upgrade_id")
    statuses, health, known = PartitionStore(0), {}, None
    for record in iter_topic(settings, settings.topic(Topic.UPGRADE_STATUS)):
        status = record.value if isinstance(record.value, dict) else {}
        if status.get("tenant_id") == tenant_id:
            fold_status(statuses, status)
        elif status.get("upgrade_id") == upgrade_id and upgrade_id is not None:
            known = "taken"
    for record in iter_topic(settings, settings.topic(Topic.SERVICE_HEALTH)):
        if isinstance(record.value, dict) and isinstance(record.value.get("service"), str):
            health[record.value["service"]] = record.value.get("status")
    tenant = TenantState.load(statuses, str(tenant_id))
    if upgrade_id in tenant.upgrades:
        known = "repeat"
    holders = 0
    if isinstance(tenant_id, str) and isinstance(request.get("source_subscription_id"), str):
        holders = open_directory(settings).count_holders(tenant_id, request["source_subscription_id"])
    view = TenantView(holders, health, tenant.in_flight, settings.prepaid_policy)
    result = preview(request, view, Catalogue.for_settings(settings), datetime.now(timezone.utc).date(),
                     batch_size=settings.batch_size, credit_check_threshold_minor=settings.credit_check_threshold_minor,
                     credit_check_expiry_days=settings.credit_check_expiry_days, known=known)
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False))
        return 0
    print(describe(result))
    return 0


def describe(result) -> str:
    lines = {"accepted": ["would be accepted and migrated at once"],
             "credit_check": ["would be accepted, then wait for a credit check"],
             "rejected": ["would be rejected"],
             "repeat": ["would be ignored: this tenant used this upgrade_id before (send a new one)"],
             "taken": ["would be refused: another tenant uses this upgrade_id (send one of your own)"]}[result.verdict]
    for r in result.reasons:
        lines.append(f"  {r['code']}: {r['message']} — remedy: {r['remedy']}")
    if result.credit_check:
        c = result.credit_check
        lines.append(f"  credit check ({c['reason']}): decision due by {c['due_by']}, rejected if none by "
                     f"{c['expires_after']}")
    if result.credit:
        c = result.credit
        lines.append(f"  if it completed today: {c['basis']} credit {c['amount_minor']} {c['currency']} (minor units; "
                     f"{c['unused_days']} of {c['period_days']} days), due by {c['due_by']}"
                     + (f", prepaid forfeit {c['forfeit_minor']}" if c["forfeit_minor"] else ""))
        lines.append(f"  {result.users} users in {result.batches} batches")
    return "\n".join(lines)
