"""`planshift replay GROUP`: move a stopped consumer group's offsets, as
`kafka-consumer-groups --reset-offsets` does (CONTRACT.md §7; docs/RUNBOOK.md)."""

from __future__ import annotations

import argparse

from cli.args import duration_ms, timestamp
from planshift.settings import Settings


def register(sub) -> None:
    replay = sub.add_parser(
        "replay", help="plan, then move, a stopped consumer group's offsets (dry run unless --execute)",
        description="Prints, per partition, where the group stands and where it would start (current → new, "
                    "and how many records that re-reads); only --execute moves it. Refused while the group has "
                    "members: stop its consumers first. Replaying any topic produces no second billing switch, "
                    "credit or migration: every planshift consumer is idempotent.")
    replay.add_argument("group", help="the consumer group, e.g. planshift-settle")
    where = replay.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-earliest", action="store_true", help="the earliest offset each partition still holds")
    where.add_argument("--to-latest", action="store_true", help="the end of each partition (skip what is there)")
    where.add_argument("--to-offset", type=int, metavar="N", help="this offset on every chosen partition")
    where.add_argument("--to-datetime", type=timestamp, metavar="ISO",
                       help="the first offset at or after this time (e.g. 2026-11-17T09:00:00Z)")
    where.add_argument("--by-duration", type=duration_ms, metavar="DURATION",
                       help="the first offset at or after this long ago (PT1H, P2D, 30m, 2h)")
    where.add_argument("--shift-by", type=int, metavar="N", help="the committed offset plus N (negative: back)")
    # The names of earlier versions, kept working.
    where.add_argument("--to-start", action="store_true", dest="to_earliest", help=argparse.SUPPRESS)
    where.add_argument("--to-time", type=timestamp, dest="to_datetime", help=argparse.SUPPRESS)
    replay.add_argument("--topic", action="append", default=None, metavar="TOPIC[:P,P]",
                        help="only this topic, or these of its partitions (repeatable; default: every partition "
                             "the group has committed)")
    replay.add_argument("--all-topics", action="store_true",
                        help="every topic the group has committed (the default; as kafka-consumer-groups)")
    replay.add_argument("--execute", action="store_true", help="move the offsets (without it: print the plan only)")
    replay.set_defaults(handler=run_replay)


def spec_of(args: argparse.Namespace) -> tuple[str, int | None]:
    if args.to_earliest:
        return "earliest", None
    if args.to_latest:
        return "latest", None
    if args.to_offset is not None:
        return "offset", args.to_offset
    if args.to_datetime is not None:
        return "datetime", int(args.to_datetime.timestamp() * 1000)
    if args.by_duration is not None:
        return "duration", args.by_duration
    return "shift", args.shift_by


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    from cli.args import fail
    from planshift.ops.offsets import execute, plan_reset

    if args.all_topics and args.topic:
        return fail("--all-topics and --topic exclude each other", 2)
    plan = plan_reset(settings, args.group, spec_of(args), args.topic)
    print(plan.describe())
    if not args.execute:
        print("dry run: nothing moved (add --execute to move the offsets as planned)")
        return 0
    execute(settings, plan)
    print(f"moved {len(plan.moves)} partitions of group {plan.group}")
    return 0
