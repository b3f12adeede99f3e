"""`planshift tail TOPIC`: a topic's committed events as JSON lines."""

from __future__ import annotations

import argparse

from planshift.settings import Settings


def register(sub) -> None:
    tail = sub.add_parser("tail", help="print a topic's committed events (read_committed) as JSON lines")
    tail.add_argument("topic", help="a contract topic name, e.g. upgrade.status")
    tail.add_argument("--limit", type=int, default=None, help="print at most this many events")
    tail.add_argument("--timeout", type=float, default=30.0, help="seconds to read before giving up")
    tail.set_defaults(handler=tail_topic)


def tail_topic(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from planshift.kafka.reader import iter_topic

    shown = 0
    for record in iter_topic(settings, settings.topic(args.topic), timeout=args.timeout):
        value = record.value if record.raw_json else repr(record.value)
        print(json.dumps({"partition": record.partition, "offset": record.offset, "key": record.key,
                          "value": value}, ensure_ascii=False))
        shown += 1
        if args.limit is not None and shown >= args.limit:
            break
    return 0
