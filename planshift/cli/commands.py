"""The commands: each a small function from parsed arguments to an exit code."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from planshift.settings import Settings, SettingsError

Handler = Callable[[argparse.Namespace, Settings], int]


def _fail(message: str, code: int = 1) -> int:
    print(f"planshift: error: {message}", file=sys.stderr)
    return code


def register(sub: argparse._SubParsersAction) -> None:
    # broker ---------------------------------------------------------------
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

    # topics ---------------------------------------------------------------
    topics = sub.add_parser("topics", help="create the contract's topics",
                            description="Topics of CONTRACT.md §2 and their dead-letter topics.")
    tsub = topics.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(topics))
    tsub.add_parser("create", help="create every missing topic; a second run changes nothing") \
        .set_defaults(handler=topics_create)
    tsub.add_parser("list", help="list the planned topics with partitions and retention") \
        .set_defaults(handler=topics_list, needs_broker=False)

    # publish --------------------------------------------------------------
    publish = sub.add_parser("publish", help="publish events as an upstream system would")
    psub = publish.add_subparsers(dest="what", required=True, metavar="WHAT", parser_class=type(publish))
    pur = psub.add_parser("upgrade-requests", help="publish upgrade.requested events from a JSON Lines file",
                          description="Validates each line before sending; reports errors per line. "
                                      "Missing envelope fields (event_id, event_type, schema_version, "
                                      "occurred_at) are filled in.")
    pur.add_argument("file", type=Path, metavar="FILE.jsonl")
    pur.set_defaults(handler=publish_upgrade_requests)

    # tail -----------------------------------------------------------------
    tail = sub.add_parser("tail", help="print a topic's committed events (read_committed) as JSON lines")
    tail.add_argument("topic", help="a contract topic name, e.g. upgrade.status")
    tail.add_argument("--limit", type=int, default=None, help="print at most this many events")
    tail.add_argument("--timeout", type=float, default=30.0, help="seconds to read before giving up")
    tail.set_defaults(handler=tail_topic)

    # run ------------------------------------------------------------------
    run = sub.add_parser("run", help="run a planshift consumer until stopped (SIGTERM/Ctrl-C drain and exit)")
    rsub = run.add_subparsers(dest="consumer", required=True, metavar="CONSUMER", parser_class=type(run))
    _consumer_parser(rsub, "intake", "validate requests, check eligibility and credit, plan batches",
                     "Consumes upgrade.requested, credit.check.decided and upgrade.status with the service.health "
                     "table; emits upgrade.status, credit.check.requested and license.batches, exactly once.")
    migrate = _consumer_parser(rsub, "migrate", "migration workers: move each batch's users to the new plan",
                               "A consumer group over license.batches; emits license.batch.completed (and "
                               "upgrade.status failed for a batch that keeps failing).")
    migrate.add_argument("--instances", type=_positive_int, default=1, metavar="N",
                         help="run N worker processes under a supervisor (default 1, in this process)")
    _consumer_parser(rsub, "settle", "settlement: billing switch and prorated credit, once per upgrade",
                     "Consumes license.batch.completed; when an upgrade's last batch is in, emits billing.switch, "
                     "credit.issued and upgrade.status completed in one transaction and writes the reset report.")

    archive = rsub.add_parser("archive", help="archive business events into the Parquet lake, exactly once",
                              description="Sinks upgrade.requested, upgrade.status, billing.switch, credit.issued "
                                          "and invoice.issued into PLANSHIFT_DATA_DIR/lake (Hive-partitioned by "
                                          "topic and event date); progress lives in the lake's manifests.")
    archive.add_argument("--instance", default="0", help="this instance's stable name")
    archive.add_argument("--flush-every", type=_positive_int, default=20_000, metavar="N",
                         help="write the buffered records after N records (default 20000)")
    archive.add_argument("--flush-interval-s", type=float, default=5.0, metavar="S",
                         help="… or after S seconds (default 5)")
    archive.set_defaults(handler=run_archive, long_running=True)

    everything = rsub.add_parser("all", help="supervise intake, N migration workers and settlement as child "
                                             "processes; restart a child that dies; Ctrl-C stops them cleanly")
    everything.add_argument("--migrate-instances", type=_positive_int, default=2, metavar="N",
                            help="migration worker processes (default 2)")
    everything.set_defaults(handler=run_all, long_running=True)

    # simulate ---------------------------------------------------------------
    simulate = sub.add_parser("simulate", help="simulate the systems around planshift")
    ssub = simulate.add_subparsers(dest="what", required=True, metavar="WHAT", parser_class=type(simulate))
    billing = ssub.add_parser("billing", help="issue invoice.issued from billing.switch and credit.issued, "
                                              "with optional faults",
                              description="A billing system: the old plan charged up to the switch, the new plan "
                                          "from it, the credit on the next invoice. Faults hit a share of the "
                                          "upgrades, reproducibly (a hash of seed, fault and upgrade id).")
    billing.add_argument("--fault", action="append", default=[], metavar="NAME=RATE", type=_fault,
                         help="inject a fault at a rate in [0, 1]; repeatable. Names: overlap, new-billing-gap, "
                              "new-billing-early, missing-credit, late-credit, wrong-amount, duplicate-credit, "
                              "orphan-credit, wrong-currency; harmless (a correct report flags nothing): "
                              "redelivered-invoice, split-credit")
    billing.add_argument("--seed", default="planshift", help="seed of the fault choice")
    billing.add_argument("--instance", default="0", help="this instance's stable name")
    billing.set_defaults(handler=run_billing_simulator, long_running=True)

    # reconcile --------------------------------------------------------------
    reconcile = sub.add_parser("reconcile", help="the nightly reconciliation of invoices against switches and credits",
                               description="Reads the lake up to D and writes findings, upgrades and summary "
                                           "(Parquet, Hive-partitioned by run_date) and a PNG chart under "
                                           "PLANSHIFT_DATA_DIR/reports/reconciliation.")
    reconcile.add_argument("--date", required=True, type=_run_date, metavar="D",
                           help="the run date: YYYY-MM-DD, 'today' or 'yesterday' (UTC)")
    reconcile.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    reconcile.add_argument("--buckets", type=_positive_int, default=None, metavar="N",
                           help="split the work into N tenant buckets, one after another, to bound memory "
                                "(default: one per 4 million archived invoices)")
    reconcile.set_defaults(handler=run_reconcile, needs_broker=False)

    # dlq ------------------------------------------------------------------------
    dlq_cmd = sub.add_parser("dlq", help="list, inspect and re-drive dead letters")
    qsub = dlq_cmd.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(dlq_cmd))
    qsub.add_parser("list", help="every dead-letter topic: how many records, by consumer group and error") \
        .set_defaults(handler=dlq_list)
    show = qsub.add_parser("show", help="print a dead-letter topic's records with their headers (JSON lines)")
    show.add_argument("topic", help="a dead-letter topic, e.g. upgrade.requested.dlq")
    show.add_argument("--limit", type=_positive_int, default=None, help="print at most this many")
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

    # replay -----------------------------------------------------------------------
    replay = sub.add_parser("replay", help="move a stopped consumer group's offsets: to the start, an offset or a time",
                            description="Stop the group's consumers first. Replaying any topic produces no second "
                                        "billing switch, credit or migration: every planshift consumer is idempotent.")
    replay.add_argument("group", help="the consumer group, e.g. planshift-settle")
    where = replay.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-start", action="store_true", help="the earliest offsets")
    where.add_argument("--to-offset", type=int, metavar="N", help="this offset on every partition")
    where.add_argument("--to-time", type=_timestamp, metavar="ISO", help="the first offsets at or after this time")
    replay.add_argument("--topic", action="append", default=None,
                        help="only this topic (repeatable); default: every topic the group has committed")
    replay.set_defaults(handler=run_replay)

    # status -----------------------------------------------------------------
    status = sub.add_parser("status", help="an upgrade's state, reasons and progress (the admin's 'Check upgrade status')")
    status.add_argument("upgrade_id", metavar="UPGRADE_ID")
    status.add_argument("--timeout", type=float, default=30.0, help="seconds to read upgrade.status before giving up")
    status.set_defaults(handler=show_status)

    # directory ------------------------------------------------------------
    directory = sub.add_parser("directory", help="the embedded licence directory (SQLite under PLANSHIFT_DATA_DIR)")
    dsub = directory.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(directory))
    imp = dsub.add_parser("import", help="load licences from Parquet (tenant_id, user_id, subscription_id, sku, "
                                         "disabled_services); a bad file changes nothing")
    imp.add_argument("file", type=Path, metavar="FILE.parquet")
    imp.add_argument("--replace", action="store_true", help="replace the whole directory instead of merging")
    imp.set_defaults(handler=directory_import, needs_broker=False)
    exp = dsub.add_parser("export", help="write the whole directory to Parquet")
    exp.add_argument("file", type=Path, metavar="FILE.parquet")
    exp.set_defaults(handler=directory_export, needs_broker=False)

    # demo -----------------------------------------------------------------
    demo = sub.add_parser("demo", help="start the broker, create topics, publish sample requests, read them back")
    demo.add_argument("--file", type=Path, default=None, help="requests to publish (default: the shipped samples)")
    demo.set_defaults(handler=run_demo, needs_broker=False)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _fault(text: str) -> tuple[str, float]:
    from producers.billing import FAULTS, HARMLESS

    name, _, rate = text.partition("=")
    if name not in FAULTS + HARMLESS:
        raise argparse.ArgumentTypeError(f"unknown fault {name!r}; known: {', '.join(FAULTS + HARMLESS)}")
    try:
        value = float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the rate must be a number in [0, 1]") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the rate must be in [0, 1]")
    return name, value


def _timestamp(text: str):
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _run_date(text: str):
    from datetime import date, datetime, timedelta, timezone

    today = datetime.now(timezone.utc).date()
    if text == "today":
        return today
    if text == "yesterday":
        return today - timedelta(days=1)
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD, today, yesterday)") from None


def _consumer_parser(rsub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """`planshift run NAME`: a consumer of `consumers/NAME.py` on the transactional runtime."""
    parser = rsub.add_parser(name, help=help, description=description)
    parser.add_argument("--instance", default="0",
                        help="this instance's stable name, used as its transactional id (default 0)")
    _commit_options(parser)
    parser.set_defaults(handler=run_consumer, consumer_module=name, long_running=True)
    return parser


def _commit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--commit-every", type=_positive_int, default=None, metavar="N",
                        help="commit the transaction after N records (default 5000)")
    parser.add_argument("--commit-interval-ms", type=_positive_int, default=None, metavar="MS",
                        help="… or after MS milliseconds under load, whichever comes first "
                             "(default PLANSHIFT_COMMIT_INTERVAL_MS, else intake 1000, the others 200)")


def dispatch(args: argparse.Namespace) -> int:
    from planshift import logs

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return _fail(str(exc), 2)
    # Long-running processes (`run …`) log at the configured level; one-shot commands
    # print their own results and keep the log to warnings, and leave kafka-python's
    # reconnect chatter out (an unreachable broker is reported once, below).
    if getattr(args, "long_running", False):
        logs.configure(settings.log_level)
    else:
        logs.configure("WARNING", kafka_level="CRITICAL")
    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    from planshift.broker import BrokerError
    from planshift.catalogue import CatalogueError
    from planshift.directory import DirectoryError
    from planshift.kafka_clients import BrokerUnreachable
    from planshift.operations import OperationError

    try:
        if getattr(args, "needs_broker", True):
            from planshift.kafka_clients import require_broker

            require_broker(settings)
        return args.handler(args, settings)
    except (KafkaConnectionError, KafkaTimeoutError):
        return _fail(f"no Kafka broker answers at {settings.bootstrap_servers} "
                     "(start one with 'planshift broker start')")
    except (BrokerError, BrokerUnreachable, CatalogueError, DirectoryError, OperationError, LookupError, TimeoutError, KafkaError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


# -- handlers ----------------------------------------------------------------

def broker_start(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.broker import LocalBroker

    began = time.monotonic()
    status, started = LocalBroker(settings).start(timeout=args.timeout)
    if started:
        print(f"broker started in {time.monotonic() - began:.1f}s: {status.describe()}")
    else:
        print(f"broker already running: {status.describe()}")
    return 0


def broker_stop(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.broker import LocalBroker

    print("broker stopped" if LocalBroker(settings).stop() else "broker was not running")
    return 0


def broker_status(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.broker import LocalBroker

    status = LocalBroker(settings).status()
    print(status.describe())
    return 0 if status.running else 3


def topics_create(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.topics import create_topics

    print(create_topics(settings).describe())
    return 0


def topics_list(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.topics import planned_topics

    for plan in planned_topics(settings):
        policy = plan.configs["cleanup.policy"]
        keep = "compacted" if policy == "compact" else f"{int(plan.configs['retention.ms']) // 86_400_000} days"
        print(f"{plan.name:<32} {plan.partitions:>3} partitions  {keep}")
    return 0


def publish_upgrade_requests(args: argparse.Namespace, settings: Settings) -> int:
    if not args.file.is_file():
        return _fail(f"{args.file}: no such file", 2)
    report = _publish_with_progress(settings, args.file)
    for number, message in report.errors:
        print(f"{args.file}:{number}: {message}", file=sys.stderr)
    print(report.describe())
    return 1 if report.errors else 0


def _publish_with_progress(settings: Settings, path: Path):
    from tqdm import tqdm

    from producers.order_system import publish_file

    with open(path, "rb") as handle:
        total = sum(1 for _ in handle)
    with tqdm(total=total, unit="line", desc="publishing", disable=None, file=sys.stderr) as bar:
        return publish_file(settings, path, on_line=lambda: bar.update(1))


def tail_topic(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from planshift.topic_reader import iter_topic

    shown = 0
    for record in iter_topic(settings, settings.topic(args.topic), timeout=args.timeout):
        value = record.value if record.raw_json else repr(record.value)
        print(json.dumps({"partition": record.partition, "offset": record.offset, "key": record.key,
                          "value": value}, ensure_ascii=False))
        shown += 1
        if args.limit is not None and shown >= args.limit:
            break
    return 0


def run_consumer(args: argparse.Namespace, settings: Settings) -> int:
    import importlib

    if getattr(args, "instances", 1) > 1:
        from planshift.cli.supervise import Child, supervise

        common = [arg for flag, value in (("--commit-every", args.commit_every),
                                          ("--commit-interval-ms", args.commit_interval_ms))
                  if value is not None for arg in (flag, str(value))]
        return supervise([Child(f"{args.consumer_module}-{i}", ["run", args.consumer_module, "--instance", str(i),
                                                                 *common]) for i in range(args.instances)])
    module = importlib.import_module(f"consumers.{args.consumer_module}")
    tuning = {name: value for name, value in (("commit_every", args.commit_every),
                                              ("commit_interval_ms", args.commit_interval_ms)) if value is not None}
    processor = module.processor(settings, instance=args.instance, **tuning)
    processor.install_signal_handlers()
    processor.run()
    return 0


def run_archive(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.archive import archiver

    worker = archiver(settings, instance=args.instance, flush_every=args.flush_every,
                      flush_interval_s=args.flush_interval_s)
    worker.install_signal_handlers()
    worker.run()
    return 0


def run_billing_simulator(args: argparse.Namespace, settings: Settings) -> int:
    from producers import billing

    processor = billing.processor(settings, rates=dict(args.fault), seed=args.seed, instance=args.instance)
    processor.install_signal_handlers()
    processor.run()
    return 0


def run_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.reconcile import reconcile, tune_memory

    tune_memory()  # this process only runs the job: its allocator may keep what it frees
    result = reconcile(settings, args.date, progress=sys.stderr.isatty(), chart=not args.no_chart,
                       buckets=args.buckets)
    print(result.describe())
    return 0


def dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    from collections import Counter

    from planshift.operations import dead_letter_topics, dead_letters

    for topic in dead_letter_topics():
        records = dead_letters(settings, topic)
        causes = Counter((r.headers.get("dlq.consumer.group", b"?").decode(),
                          r.headers.get("dlq.error.class", b"?").decode()) for r in records)
        detail = ", ".join(f"{n} from {group} ({error})" for (group, error), n in sorted(causes.items()))
        print(f"{settings.topic(topic):<36} {len(records):>6}" + (f"  {detail}" if detail else ""))
    return 0


def dlq_show(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from planshift.operations import dead_letters

    if not args.topic.endswith(".dlq"):
        return _fail(f"{args.topic} is not a dead-letter topic (they end in .dlq)", 2)
    for shown, record in enumerate(dead_letters(settings, args.topic)):
        if args.limit is not None and shown >= args.limit:
            break
        value = record.value if record.raw_json else (record.value or b"").decode("utf-8", "replace")
        print(json.dumps({"offset": record.offset, "key": record.key,
                          "headers": {k: v.decode("utf-8", "replace") for k, v in record.headers.items()},
                          "value": value}, ensure_ascii=False))
    return 0


def dlq_redrive(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.operations import redrive

    print(redrive(settings, args.topic, group=args.group).describe())
    return 0


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.operations import reset_offsets

    moved = reset_offsets(settings, args.group, args.topic, to_start=args.to_start, to_offset=args.to_offset,
                          to_time=args.to_time)
    for tp, offset in sorted(moved.items(), key=lambda item: (item[0].topic, item[0].partition)):
        print(f"{tp.topic}[{tp.partition}] → {offset}")
    print(f"moved {len(moved)} partitions of group {settings.topic(args.group)}")
    return 0


def run_all(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.cli.supervise import Child, supervise

    children = [Child("intake", ["run", "intake"]), Child("settle", ["run", "settle"])]
    children += [Child(f"migrate-{i}", ["run", "migrate", "--instance", str(i)]) for i in range(args.migrate_instances)]
    return supervise(children)


def show_status(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.contract import Topic
    from planshift.topic_reader import iter_topic

    events = [r.value for r in iter_topic(settings, settings.topic(Topic.UPGRADE_STATUS), timeout=args.timeout)
              if isinstance(r.value, dict) and r.value.get("upgrade_id") == args.upgrade_id]
    if not events:
        return _fail(f"no status for upgrade {args.upgrade_id} on {settings.topic(Topic.UPGRADE_STATUS)}")
    print(describe_status(events))
    return 0


def describe_status(events: list[dict]) -> str:
    """The admin's view of one upgrade from its status events, oldest first."""
    latest = events[-1]
    lines = [f"upgrade {latest['upgrade_id']} of {latest['tenant_id']}: {latest['status'].upper()}",
             "history: " + " → ".join(dict.fromkeys(e["status"] for e in events))]
    progress = next((e["progress"] for e in reversed(events) if e.get("progress")), None)
    if progress:
        total = progress["users_total"] or 1
        done = progress["users_done"] if latest["status"] != "completed" else progress["users_total"]
        filled = int(30 * done / total) if progress["users_total"] else 30
        lines.append(f"progress: [{'#' * filled}{'.' * (30 - filled)}] {done}/{progress['users_total']} users, "
                     f"{progress['batches_done']}/{progress['batch_count']} batches")
    if latest.get("admin_locked_until"):
        lines.append(f"admin centre locked until {latest['admin_locked_until']}")
    check = latest.get("credit_check") if latest["status"] == "credit_check_pending" else None
    if check:
        why = {"INVOICE_PAYMENT": "paying by invoice", "COST_THRESHOLD": "the order's cost"}.get(check["reason"],
                                                                                                check["reason"])
        lines.append(f"credit check pending ({why}), due by {check['due_by']}; users keep their current plan "
                     "meanwhile")
    for reason in latest.get("reasons") or []:
        retry = f"; retry after {reason['retry_after']}" if reason.get("retry_after") else ""
        lines.append(f"reason {reason['code']}: {reason['message']} (remedy {reason['remedy']}{retry})")
    if latest["status"] == "completed":
        lines.append(f"new subscription {latest.get('new_subscription_id')}; credit {latest.get('credit_minor')} "
                     f"{latest.get('currency')} minor units, forfeited {latest.get('forfeit_minor')}; "
                     f"{latest.get('service_plan_resets')} users had per-service settings reset")
    return "\n".join(lines)


def directory_import(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.directory import SqliteDirectory, import_parquet

    directory = SqliteDirectory.for_settings(settings)
    count = import_parquet(directory, args.file, replace_all=args.replace)
    print(f"imported {count} licences from {args.file} into {directory.path} "
          f"({directory.count()} licences in all)")
    return 0


def directory_export(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.directory import SqliteDirectory, export_parquet

    directory = SqliteDirectory.for_settings(settings)
    count = export_parquet(directory, args.file)
    print(f"exported {count} licences from {directory.path} to {args.file}")
    return 0


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from planshift.cli import demo

    return demo.run(settings, args.file)
