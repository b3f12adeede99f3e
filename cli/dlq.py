"""`planshift dlq list|show|redrive`: dead letters after an incident (CONTRACT.md §7; docs/RUNBOOK.md)."""

from __future__ import annotations

import argparse

from cli.args import fail, positive_int, timestamp
from planshift.settings import Settings


def register(sub) -> None:
    dlq_cmd = sub.add_parser("dlq", help="list, inspect and re-drive dead letters")
    qsub = dlq_cmd.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(dlq_cmd))
    qsub.add_parser("list", help="every dead-letter topic: how many records, by consumer group and error") \
        .set_defaults(handler=dlq_list)
    show = qsub.add_parser("show", help="print a dead-letter topic's records with their headers (JSON lines)")
    show.add_argument("topic", help="a dead-letter topic, e.g. upgrade.requested.dlq")
    show.add_argument("--limit", type=positive_int, default=None, help="print at most this many")
    show.add_argument("--no-stacktrace", action="store_true", help="leave the dlq.error.stacktrace header out")
    show.set_defaults(handler=dlq_show)
    redrive = qsub.add_parser(
        "redrive", help="plan, then publish, chosen dead letters back to their source topic, each once "
                        "(dry run unless --execute)",
        description="Prints what a re-drive would do with each dead letter: re-drive it, or leave it (not chosen, "
                    "re-driven before, or its upgrade already final: a re-drive could change nothing). Only "
                    "--execute sends the chosen ones back, each with a record of its re-drive in the same "
                    "transaction (topic dlq.redriven), so nothing is re-driven twice by accident. Every consumer "
                    "of the source topic sees them again; planshift's consumers are idempotent.")
    redrive.add_argument("topic", help="a dead-letter topic, e.g. upgrade.requested.dlq")
    redrive.add_argument("--group", default=None,
                         help="only dead letters of this consumer group (e.g. planshift-intake)")
    redrive.add_argument("--partition", type=int, default=None, metavar="P", help="only this partition of TOPIC")
    redrive.add_argument("--from-offset", type=int, default=None, metavar="N", help="only offsets ≥ N")
    redrive.add_argument("--to-offset", type=int, default=None, metavar="N", help="only offsets ≤ N")
    redrive.add_argument("--since", type=timestamp, default=None, metavar="ISO",
                         help="only dead letters written at or after this time")
    redrive.add_argument("--until", type=timestamp, default=None, metavar="ISO",
                         help="only dead letters written before this time")
    redrive.add_argument("--error-class", action="append", default=[], metavar="NAME",
                         help="only this dlq.error.class, e.g. ConnectionError (repeatable)")
    redrive.add_argument("--include-final", action="store_true",
                         help="re-drive a dead letter even when its upgrade is final (rolling forward by hand)")
    redrive.add_argument("--all", action="store_true", help="list every dead letter of the plan, not the first 50")
    redrive.add_argument("--execute", action="store_true", help="send them (without it: print the plan only)")
    redrive.set_defaults(handler=dlq_redrive)


def dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    from collections import Counter

    from planshift.ops.deadletters import dead_letter_topics, dead_letters

    for topic in dead_letter_topics():
        records = dead_letters(settings, topic)
        causes = Counter((r.headers.get("dlq.consumer.group", b"?").decode(),
                          r.headers.get("dlq.error.class", b"?").decode()) for r in records)
        detail = ", ".join(f"{n} from {group} ({error})" for (group, error), n in sorted(causes.items()))
        print(f"{settings.topic(topic):<36} {len(records):>6}" + (f"  {detail}" if detail else ""))
    return 0


def dlq_show(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from planshift.ops.deadletters import dead_letters

    if not args.topic.endswith(".dlq"):
        return fail(f"{args.topic} is not a dead-letter topic (they end in .dlq)", 2)
    for shown, record in enumerate(dead_letters(settings, args.topic)):
        if args.limit is not None and shown >= args.limit:
            break
        value = record.value if record.raw_json else (record.value or b"").decode("utf-8", "replace")
        headers = {k: v.decode("utf-8", "replace") for k, v in record.headers.items()
                   if not (args.no_stacktrace and k == "dlq.error.stacktrace")}
        print(json.dumps({"offset": record.offset, "partition": record.partition, "timestamp": record.timestamp,
                          "key": record.key, "headers": headers, "value": value}, ensure_ascii=False))
    return 0


def dlq_redrive(args: argparse.Namespace, settings: Settings) -> int:
    import sys

    from tqdm import tqdm

    from planshift.ops.deadletters import Selection, execute_redrive, plan_redrive

    if not args.topic.endswith(".dlq"):
        return fail(f"{args.topic} is not a dead-letter topic (they end in .dlq)", 2)
    if None not in (args.from_offset, args.to_offset) and args.from_offset > args.to_offset:
        return fail(f"--from-offset {args.from_offset} is after --to-offset {args.to_offset}", 2)
    if None not in (args.since, args.until) and args.since >= args.until:
        return fail("--since must be before --until", 2)
    selection = Selection(group=args.group, partition=args.partition, from_offset=args.from_offset,
                          to_offset=args.to_offset,
                          since_ms=None if args.since is None else int(args.since.timestamp() * 1000),
                          until_ms=None if args.until is None else int(args.until.timestamp() * 1000),
                          error_classes=tuple(args.error_class), include_final=args.include_final)
    plan = plan_redrive(settings, args.topic, selection)
    print(plan.describe(limit=None if args.all else 50))
    if not args.execute:
        print("dry run: nothing re-driven (add --execute to re-drive as planned)")
        return 0
    with tqdm(total=len(plan.chosen), desc="re-driving", unit="record", disable=not sys.stderr.isatty() or None,
              leave=False) as bar:
        report = execute_redrive(settings, plan, progress=bar.update)
    print(report.describe())
    return 0
