"""`planshift` — the command line (CONTRACT.md §8).

Exit codes: 0 done, 1 the command failed (the broker is unreachable, a file is bad …),
2 a bad argument (one line on stderr). The CLI is the outermost edge: it reads the
settings once and hands them to the parts it runs.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from planshift import __version__
from planshift.cli import commands


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> Parser:
    parser = Parser(prog="planshift",
                    description="SaaS subscription-plan upgrades over Apache Kafka, settled exactly once.")
    parser.add_argument("--version", action="version", version=f"planshift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return commands.dispatch(args)

