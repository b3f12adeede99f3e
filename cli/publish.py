"""`planshift publish upgrade-requests FILE`: requests published as an order system would."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.args import fail
from planshift.settings import Settings


def register(sub) -> None:
    publish = sub.add_parser("publish", help="publish events as an upstream system would")
    psub = publish.add_subparsers(dest="what", required=True, metavar="WHAT", parser_class=type(publish))
    pur = psub.add_parser("upgrade-requests", help="publish upgrade.requested events from a JSON Lines file",
                          description="Validates each line before sending; reports errors per line. "
                                      "Missing envelope fields (event_id, event_type, schema_version, "
                                      "occurred_at) are filled in.")
    pur.add_argument("file", type=Path, metavar="FILE.jsonl")
    pur.set_defaults(handler=publish_upgrade_requests)


def publish_upgrade_requests(args: argparse.Namespace, settings: Settings) -> int:
    if not args.file.is_file():
        return fail(f"{args.file}: no such file", 2)
    report = publish_with_progress(settings, args.file)
    for number, message in report.errors:
        print(f"{args.file}:{number}: {message}", file=sys.stderr)
    print(report.describe())
    return 1 if report.errors else 0


def publish_with_progress(settings: Settings, path: Path):
    from tqdm import tqdm

    from producers.order_system import publish_file

    with open(path, "rb") as handle:
        total = sum(1 for _ in handle)
    with tqdm(total=total, unit="line", desc="publishing", disable=None, file=sys.stderr) as bar:
        return publish_file(settings, path, on_line=lambda: bar.update(1))
