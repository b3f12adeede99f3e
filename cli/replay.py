"""`planshift replay GROUP`: move a stopped consumer group's offsets (CONTRACT.md §7)."""

from __future__ import annotations

import argparse

from cli.args import timestamp
from planshift.settings import Settings


def register(sub) -> None:
    replay = sub.add_parser("replay", help="move a stopped consumer group's offsets: to the start, an offset or a time",
                            description="Stop the group's consumers first. Replaying any topic produces no second "
                                        "billing switch, credit or migration: every planshift consumer is idempotent.")
    replay.add_argument("group", help="the consumer group, e.g. planshift-settle")
    where = replay.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-start", action="store_true", help="the earliest offsets")
    where.add_argument("--to-offset", type=int, metavar="N", help="this offset on every partition")
    where.add_argument("--to-time", type=timestamp, metavar="ISO", help="the first offsets at or after this time")
    replay.add_argument("--topic", action="append", default=None,
                        help="only this topic (repeatable); default: every topic the group has committed")
    replay.set_defaults(handler=run_replay)


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.ops.offsets import reset_offsets

    moved = reset_offsets(settings, args.group, args.topic, to_start=args.to_start, to_offset=args.to_offset,
                          to_time=args.to_time)
    for tp, offset in sorted(moved.items(), key=lambda item: (item[0].topic, item[0].partition)):
        print(f"{tp.topic}[{tp.partition}] → {offset}")
    print(f"moved {len(moved)} partitions of group {settings.topic(args.group)}")
    return 0
