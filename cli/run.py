"""`planshift run CONSUMER`: a consumer on the runtime, until SIGTERM or Ctrl-C.

The process entry point of every long-running planshift process: it tunes the process
(`cli/tuning.py`) before the consumer starts."""

from __future__ import annotations

import argparse

from cli import tuning
from cli.args import METRICS_PORT_HELP, metrics_option, positive_int
from planshift.settings import Settings

INSTANCE_HELP = ("this instance's stable name: its transactional id and static group membership, unique per "
                 "running process (default: PLANSHIFT_INSTANCE or the host name, and the lowest slot on this host "
                 "no running instance holds, e.g. web-1-0)")


def _instance(args: argparse.Namespace, settings: Settings, group: str) -> str:
    if args.instance:
        return args.instance
    from planshift.ops.instance import claim_instance

    return claim_instance(settings, group)


def register(sub) -> None:
    run = sub.add_parser("run", help="run a planshift consumer until stopped (SIGTERM/Ctrl-C drain and exit)")
    rsub = run.add_subparsers(dest="consumer", required=True, metavar="CONSUMER", parser_class=type(run))
    _consumer_parser(rsub, "intake", "validate requests, check eligibility and credit, plan batches",
                     "Consumes upgrade.requested, credit.check.decided and upgrade.ended with the service.health "
                     "table; emits upgrade.status, credit.check.requested and license.batches, exactly once.")
    migrate = _consumer_parser(rsub, "migrate", "migration workers: move each batch's users to the new plan",
                               "A consumer group over license.batches; emits license.batch.completed (and "
                               "upgrade.status failed for a batch that keeps failing).")
    migrate.add_argument("--instances", type=positive_int, default=1, metavar="N",
                         help="run N worker processes under a supervisor (default 1, in this process)")
    _consumer_parser(rsub, "settle", "settlement: billing switch and prorated credit, once per upgrade",
                     "Consumes license.batch.completed; when an upgrade's last batch is in, emits billing.switch, "
                     "credit.issued and upgrade.status completed in one transaction and writes the reset report.")

    archive = rsub.add_parser("archive", help="archive business events into the Parquet lake, exactly once",
                              description="Sinks upgrade.requested, upgrade.status, billing.switch, credit.issued "
                                          "and invoice.issued into PLANSHIFT_DATA_DIR/lake (Hive-partitioned by "
                                          "topic and event date), exactly once: rows the lake holds are never written again.")
    archive.add_argument("--instance", default=None, help=INSTANCE_HELP)
    metrics_option(archive)
    archive.add_argument("--flush-every", type=positive_int, default=20_000, metavar="N",
                         help="write the buffered records and commit after N records (default 20000)")
    archive.add_argument("--flush-interval-s", type=float, default=5.0, metavar="S",
                         help="… or after S seconds (default 5)")
    archive.set_defaults(handler=run_archive, long_running=True)

    everything = rsub.add_parser("all", help="supervise intake, N migration workers and settlement as child "
                                             "processes; restart a child that dies; Ctrl-C stops them cleanly")
    everything.add_argument("--migrate-instances", type=positive_int, default=2, metavar="N",
                            help="migration worker processes (default 2)")
    metrics_option(everything, "each child serves /metrics, /healthz and /readyz: intake on PORT, settlement "
                               "on PORT+1, migration worker i on PORT+2+i (default PLANSHIFT_METRICS_PORT)")
    everything.set_defaults(handler=run_all, long_running=True)


def run_archive(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.archive import GROUP_ID, archiver

    tuning.for_consumer()
    worker = archiver(settings, instance=_instance(args, settings, GROUP_ID), flush_every=args.flush_every,
                      flush_interval_s=args.flush_interval_s)
    worker.install_signal_handlers()
    worker.exit_if_stalled()
    worker.run()
    return 0


def run_all(args: argparse.Namespace, settings: Settings) -> int:
    from cli.supervise import Child, supervise

    base = settings.metrics_port
    children = [Child("intake", ["run", "intake", *_port(base, 0)]), Child("settle", ["run", "settle", *_port(base, 1)])]
    children += [Child(f"migrate-{i}", ["run", "migrate", "--instance", str(i), *_port(base, 2 + i)])
                 for i in range(args.migrate_instances)]
    return supervise(children)


def _port(base: int | None, offset: int) -> list[str]:
    """A supervised child's --metrics-port: the base port plus its place (0 stays 0: any free port)."""
    if base is None:
        return []
    return ["--metrics-port", str(base + offset if base else 0)]


def _consumer_parser(rsub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """`planshift run NAME`: a consumer of `consumers/NAME.py` on the transactional runtime."""
    parser = rsub.add_parser(name, help=help, description=description)
    parser.add_argument("--instance", default=None, help=INSTANCE_HELP)
    metrics_option(parser, METRICS_PORT_HELP + "; with --instances N, instance i on PORT+i")
    _commit_options(parser)
    parser.set_defaults(handler=run_consumer, consumer_module=name, long_running=True)
    return parser


def _commit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--commit-every", type=positive_int, default=None, metavar="N",
                        help="commit the transaction after N records (default 5000)")
    parser.add_argument("--commit-interval-ms", type=positive_int, default=None, metavar="MS",
                        help="… or after MS milliseconds under load, whichever comes first "
                             "(default PLANSHIFT_COMMIT_INTERVAL_MS, else intake 1000, the others 200)")


def run_consumer(args: argparse.Namespace, settings: Settings) -> int:
    import importlib

    if getattr(args, "instances", 1) > 1:
        from cli.supervise import Child, supervise

        common = [arg for flag, value in (("--commit-every", args.commit_every),
                                          ("--commit-interval-ms", args.commit_interval_ms))
                  if value is not None for arg in (flag, str(value))]
        return supervise([Child(f"{args.consumer_module}-{i}", ["run", args.consumer_module, "--instance", str(i),
                                                                 *common, *_port(settings.metrics_port, i)])
                          for i in range(args.instances)])
    tuning.for_consumer()
    module = importlib.import_module(f"consumers.{args.consumer_module}")
    options = {name: value for name, value in (("commit_every", args.commit_every),
                                               ("commit_interval_ms", args.commit_interval_ms)) if value is not None}
    processor = module.processor(settings, instance=_instance(args, settings, module.GROUP_ID), **options)
    processor.install_signal_handlers()
    processor.exit_if_stalled()
    processor.run()
    return 0
