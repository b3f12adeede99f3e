"""`planshift topics create|list`: the contract's topics (CONTRACT.md §2)."""

from __future__ import annotations

import argparse

from planshift.settings import Settings


def register(sub) -> None:
    topics = sub.add_parser("topics", help="create the contract's topics",
                            description="Topics of CONTRACT.md §2 and their dead-letter topics.")
    tsub = topics.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(topics))
    tsub.add_parser("create", help="create every missing topic; a second run changes nothing") \
        .set_defaults(handler=topics_create)
    tsub.add_parser("list", help="list the planned topics with partitions and retention") \
        .set_defaults(handler=topics_list, needs_broker=False)


def topics_create(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.kafka.topics import create_topics

    print(create_topics(settings).describe())
    return 0


def topics_list(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.kafka.topics import planned_topics

    for plan in planned_topics(settings):
        policy = plan.configs["cleanup.policy"]
        keep = "compacted" if policy == "compact" else f"{int(plan.configs['retention.ms']) // 86_400_000} days"
        print(f"{plan.name:<32} {plan.partitions:>3} partitions  {keep}")
    return 0
