"""`nps-dispatch`: the command line of every process and operator task (listed in the README).

This module builds the parser and dispatches; the commands live by group in
:mod:`cli.operate` (web, worker, scheduler, tick), :mod:`cli.data` (ingest, dead letters,
customers), :mod:`cli.admin` (db, config, demo) and :mod:`cli.report`. Parsing imports none of
the heavy modules: each command imports what it needs when it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cli import admin, data, operate
from cli.common import Parser
from cli.operate import tuned_scheduler
from cli.report import add_report_parser
from config.settings import environ

__all__ = ["build_parser", "main", "tuned_scheduler"]

#: The processes that run until stopped: their start-up lines (which config, which version)
#: belong in their logs. A one-off command prints only its own result.
LONG_RUNNING = frozenset({"web", "worker", "scheduler"})
#: Loggers whose INFO lines are start-up chatter in a one-off command.
QUIET_IN_COMMANDS = ("config", "alembic.runtime.plugins")


def _setup_logging(command: str | None) -> None:
    from logs.format import configure_logging

    configure_logging(environ())
    if command not in LONG_RUNNING:
        for name in QUIET_IN_COMMANDS:
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() == logging.INFO:  # not when DEBUG was asked for
                logger.setLevel(logging.WARNING)


def build_parser() -> Parser:
    parser = Parser(
        prog="nps-dispatch",
        description="Post-purchase NPS surveys: consent-checked, delay-scheduled, bias-aware.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    operate.add_parsers(sub)
    data.add_parsers(sub)
    admin.add_parsers(sub)
    add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.command)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
