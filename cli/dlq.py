"""`planshift dlq list|show|redrive`: dead letters after an incident (CONTRACT.md §7)."""

from __future__ import annotations

import argparse

from cli.args import fail, positive_int
from planshift.settings import Settings


def register(sub) -> None:
    dlq_cmd = sub.add_parser("dlq", help="list, inspect and re-drive dead letters")
    qsub = dlq_cmd.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(dlq_cmd))
    qsub.add_parser("list", help="every dead-letter topic: how many records, by consumer group and error") \
        .set_defaults(handler=dlq_list)
    show = qsub.add_parser("show", help="print a dead-letter topic's records with their headers (JSON lines)")
    show.add_argument("topic", help="a dead-letter topic, e.g. upgrade.requested.dlq")
    show.add_argument("--limit", type=positive_int, default=None, help="print at most this many")
    show.set_defaults(handler=dlq_show)
    redrive = qsub.add_parser("redrive", help="publish dead letters back to their source topic, each once",
                              description="Re-drives the records of a dead-letter topic not re-driven before "
                                          "(exactly once: the group planshift-redrive commits their offsets in "
                                          "the same transaction). Every consumer of the source topic sees them "
                                          "again; planshift's consumers are idempotent.")
    redrive.add_argument("topic", help="a dead-letter topic, e.g. upgrade.requested.dlq")
    redrive.add_argument("--group", default=None,
                         help="only dead letters of this consumer group (e.g. planshift-intake); the rest are passed")
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
        print(json.dumps({"offset": record.offset, "key": record.key,
                          "headers": {k: v.decode("utf-8", "replace") for k, v in record.headers.items()},
                          "value": value}, ensure_ascii=False))
    return 0


def dlq_redrive(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.ops.deadletters import redrive

    print(redrive(settings, args.topic, group=args.group).describe())
    return 0
