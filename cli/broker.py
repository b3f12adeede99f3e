"""`planshift broker start|stop|status`: a local Apache Kafka for development."""

from __future__ import annotations

import argparse
import time

from planshift.settings import Settings


def register(sub) -> None:
    broker = sub.add_parser("broker", help="run a local Apache Kafka (KRaft, one node) for development",
                            description="A local Apache Kafka from Maven Central jars, listening at "
                                        "PLANSHIFT_BOOTSTRAP_SERVERS, data under PLANSHIFT_DATA_DIR/kafka.")
    bsub = broker.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(broker))
    start = bsub.add_parser("start", help="start the broker (and fetch its jars once); returns when it answers")
    start.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the broker (default 60)")
    start.set_defaults(handler=broker_start, needs_broker=False)
    bsub.add_parser("stop", help="stop the broker (SIGTERM, then wait)") \
        .set_defaults(handler=broker_stop, needs_broker=False)
    bsub.add_parser("status", help="print address, pid and Kafka version (exit 3 when not running)") \
        .set_defaults(handler=broker_status, needs_broker=False)


def broker_start(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.ops.broker import LocalBroker

    began = time.monotonic()
    status, started = LocalBroker(settings).start(timeout=args.timeout)
    if started:
        print(f"broker started in {time.monotonic() - began:.1f}s: {status.describe()}")
    else:
        print(f"broker already running: {status.describe()}")
    return 0


def broker_stop(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.ops.broker import LocalBroker

    print("broker stopped" if LocalBroker(settings).stop() else "broker was not running")
    return 0


def broker_status(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.ops.broker import LocalBroker

    status = LocalBroker(settings).status()
    print(status.describe())
    return 0 if status.running else 3
