"""`planshift reconcile --date D`: finance's nightly reconciliation (docs/FINANCE.md)."""

from __future__ import annotations

import argparse
import sys

from cli import tuning
from cli.args import positive_int, run_date
from planshift.settings import Settings


def register(sub) -> None:
    reconcile = sub.add_parser("reconcile", help="the nightly reconciliation of invoices against switches and credits",
                               description="Reads the lake up to D and writes findings, upgrades and summary "
                                           "(Parquet, Hive-partitioned by run_date) and a PNG chart under "
                                           "PLANSHIFT_DATA_DIR/reports/reconciliation.")
    reconcile.add_argument("--date", required=True, type=run_date, metavar="D",
                           help="the run date: YYYY-MM-DD, 'today' or 'yesterday' (UTC)")
    reconcile.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    reconcile.add_argument("--buckets", type=positive_int, default=None, metavar="N",
                           help="split the work into N tenant buckets, one after another, to bound memory "
                                "(default: one per 4 million archived invoices)")
    reconcile.add_argument("--pushgateway", default=None, metavar="URL",
                           help="push the findings to this Prometheus Pushgateway (default PLANSHIFT_PUSHGATEWAY_URL; "
                                "unset: not pushed)")
    reconcile.set_defaults(handler=run_reconcile, needs_broker=False)


def run_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.reconcile import reconcile

    tuning.for_reconcile()  # this process only runs the job: its allocator may keep what it frees
    result = reconcile(settings, args.date, progress=sys.stderr.isatty(), chart=not args.no_chart,
                       buckets=args.buckets)
    print(result.describe())
    gateway = args.pushgateway or settings.pushgateway_url
    if gateway:
        from jobs.metrics import JOB, push

        try:
            push(gateway, result)
        except OSError as exc:
            # The reports are written; only Prometheus did not hear of them (the alert on a
            # reconciliation that stopped running will say so if this goes on).
            print(f"planshift: error: pushing the findings to {gateway} failed: {exc}", file=sys.stderr)
            return 1
        print(f"pushed to {gateway} (job {JOB})")
    return 0
