"""`planshift broker start|stop|status`: a local Apache Kafka for development — one node, or a
cluster of N nodes on this host (`--nodes 3`)."""

from __future__ import annotations

import argparse
import time

from cli.args import positive_int
from planshift.settings import Settings


def register(sub) -> None:
    broker = sub.add_parser("broker", help="run a local Apache Kafka (KRaft; one node, or --nodes N) for development",
                            description="A local Apache Kafka from Maven Central jars, listening at "
                                        "PLANSHIFT_BOOTSTRAP_SERVERS, data under PLANSHIFT_DATA_DIR/kafka "
                                        "(a cluster: PLANSHIFT_DATA_DIR/kafka-cluster, node i at the port + i − 1).")
    bsub = broker.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(broker))
    start = bsub.add_parser("start", help="start the broker (and fetch its jars once); returns when it answers")
    start.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the broker (default 60)")
    start.add_argument("--nodes", type=positive_int, default=1, metavar="N",
                       help="a cluster of N nodes on this host, replicating to 3 with min.insync.replicas 2 "
                            "(default 1)")
    start.add_argument("--secure", action="store_true",
                       help="SASL_SSL only, SCRAM-SHA-512 users for the admin and every role, ACLs enforced "
                            "(a CA and keystore made with keytool; credentials in PLANSHIFT_DATA_DIR/kafka/"
                            "credentials.json; docs/SECURITY.md)")
    start.set_defaults(handler=broker_start, needs_broker=False)
    env = bsub.add_parser("env", help="print the PLANSHIFT_* security settings of a role of the local secured broker",
                          description="For `eval \"$(planshift broker env intake)\"`: the protocol, mechanism, user, "
                                      "password and CA of ROLE (a role of docs/SECURITY.md, or admin).")
    env.add_argument("role", help="intake, migrate, settle, archive, billing, orders, credit, operator or admin")
    env.set_defaults(handler=broker_env, needs_broker=False)
    bsub.add_parser("stop", help="stop the broker, or every node of the cluster (SIGTERM, then wait)") \
        .set_defaults(handler=broker_stop, needs_broker=False)
    bsub.add_parser("status", help="print address, pid and Kafka version (exit 3 when not running)") \
        .set_defaults(handler=broker_status, needs_broker=False)


def broker_start(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.ops.broker import LocalBroker
    from planshift.ops.cluster import LocalCluster

    began = time.monotonic()
    if args.nodes > 1:
        cluster = LocalCluster(settings, args.nodes)
        status = cluster.start(timeout=args.timeout)
        print(f"cluster started in {time.monotonic() - began:.1f}s: {status.describe()}")
        print(f"give planshift all of them: PLANSHIFT_BOOTSTRAP_SERVERS={cluster.bootstrap_servers} "
              f"PLANSHIFT_REPLICATION_FACTOR={min(3, args.nodes)}")
        return 0
    broker = LocalBroker(settings, secure=args.secure)
    status, started = broker.start(timeout=args.timeout)
    if started:
        print(f"broker started in {time.monotonic() - began:.1f}s: {status.describe()}")
    else:
        print(f"broker already running: {status.describe()}")
    if broker.secure:
        print(f"secured: SASL_SSL with SCRAM-SHA-512 at {settings.bootstrap_servers}, ACLs enforced; "
              f"CA {broker.credentials().cafile}; passwords in {broker.credentials_file}")
        print("a role's settings: eval \"$(planshift broker env intake)\"   (roles: planshift acls list)")
    return 0


def broker_env(args: argparse.Namespace, settings: Settings) -> int:
    import shlex

    from planshift.ops.broker import LocalBroker
    from planshift.ops.security import user_of

    broker = LocalBroker(settings)
    for name, value in broker.credentials().environment(user_of(args.role)).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def broker_stop(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.ops.broker import LocalBroker
    from planshift.ops.cluster import LocalCluster

    cluster = LocalCluster.found(settings)
    if cluster is not None and cluster.status().running:
        cluster.stop()
        print("cluster stopped")
        return 0
    print("broker stopped" if LocalBroker(settings).stop() else "broker was not running")
    return 0


def broker_status(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.ops.broker import LocalBroker
    from planshift.ops.cluster import LocalCluster

    cluster = LocalCluster.found(settings)
    if cluster is not None and cluster.status().running:
        status = cluster.status()
        print(status.describe())
        return 0
    status = LocalBroker(settings).status()
    print(status.describe())
    return 0 if status.running else 3
