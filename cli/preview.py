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
    from cli.args import fail
    from planshift.ops.view import StatusView, preview_request

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
    view = StatusView(settings, dead_letters=False)
    try:
        view.catch_up()
        result = preview_request(view, settings, request)
    finally:
        view.close()
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
