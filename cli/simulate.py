"""`planshift simulate billing`: the billing system around planshift, with faults."""

from __future__ import annotations

import argparse

from cli import tuning
from cli.args import fault, metrics_option
from planshift.settings import Settings


def register(sub) -> None:
    simulate = sub.add_parser("simulate", help="simulate the systems around planshift")
    ssub = simulate.add_subparsers(dest="what", required=True, metavar="WHAT", parser_class=type(simulate))
    billing = ssub.add_parser("billing", help="issue invoice.issued from billing.switch and credit.issued, "
                                              "with optional faults",
                              description="A billing system: the old plan charged up to the switch, the new plan "
                                          "from it, the credit on the next invoice. Faults hit a share of the "
                                          "upgrades, reproducibly (a hash of seed, fault and upgrade id).")
    billing.add_argument("--fault", action="append", default=[], metavar="NAME=RATE", type=fault,
                         help="inject a fault at a rate in [0, 1]; repeatable. Names: overlap, new-billing-gap, "
                              "new-billing-early, missing-credit, late-credit, wrong-amount, duplicate-credit, "
                              "orphan-credit, wrong-currency; harmless (a correct report flags nothing): "
                              "redelivered-invoice, split-credit")
    billing.add_argument("--seed", default="planshift", help="seed of the fault choice")
    billing.add_argument("--instance", default="0", help="this instance's stable name")
    metrics_option(billing)
    billing.set_defaults(handler=run_billing_simulator, long_running=True)


def run_billing_simulator(args: argparse.Namespace, settings: Settings) -> int:
    from producers import billing

    tuning.for_consumer()
    processor = billing.processor(settings, rates=dict(args.fault), seed=args.seed, instance=args.instance)
    processor.install_signal_handlers()
    processor.exit_if_stalled()
    processor.run()
    return 0
