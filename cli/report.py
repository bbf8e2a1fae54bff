"""``nps-dispatch report``: the report as rich tables, JSON (``reports/REPORT_JSON.md``) or CSV.

Wired into ``cli.main`` with :func:`add_report_parser`. Exit codes: 0 printed, 2 bad
arguments (a malformed date, an unknown segment, ``--since`` not before ``--until``).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import Any

from rich.console import Console

from reports.params import SEGMENT_KEYS, ReportError, parse_date

FORMATS = ("table", "json", "csv")


def _date_arg(value: str) -> date:
    try:
        parsed = parse_date(value, "date")
    except ReportError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date; expected YYYY-MM-DD (a UTC day)"
        ) from None
    if parsed is None:
        raise argparse.ArgumentTypeError("empty date; expected YYYY-MM-DD")
    return parsed


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report`` on an ``add_subparsers()`` object; returns its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        help="NPS with its interval, response rates, adjusted NPS and coverage",
        description=(
            "NPS with its 95% interval, AAPOR response rates, the non-response-adjusted NPS, "
            "the coverage funnel and the timing view, for purchases in [--since, --until)."
        ),
    )
    parser.add_argument("--since", type=_date_arg, help="first purchase day, UTC (inclusive)")
    parser.add_argument("--until", type=_date_arg, help="last purchase day, UTC (exclusive)")
    parser.add_argument("--by", choices=SEGMENT_KEYS, help="segment the report")
    parser.add_argument(
        "--format", choices=FORMATS, default="table", dest="format", help="output format"
    )
    parser.add_argument(
        "--compare-since",
        type=_date_arg,
        help="compare with purchases from this day (default: the previous period of the same "
        "length when --since and --until are both given)",
    )
    parser.add_argument("--compare-until", type=_date_arg, help="end of the compared period")
    parser.add_argument(
        "--no-compare", action="store_true", help="no comparison with another period"
    )
    parser.set_defaults(func=cmd_report)
    return parser


def report_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Build the report for parsed arguments (raises ReportError on bad ones)."""
    from reports.build import build_report
    from wiring.runtime import get_runtime

    runtime = get_runtime()
    return build_report(
        runtime.factory,
        runtime.config,
        getattr(args, "since", None),
        getattr(args, "until", None),
        getattr(args, "by", None),
        compare=not getattr(args, "no_compare", False),
        compare_since=getattr(args, "compare_since", None),
        compare_until=getattr(args, "compare_until", None),
    )


def cmd_report(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    fmt = getattr(args, "format", "table") or "table"
    if fmt not in FORMATS:
        err.print(f"report: --format must be one of {', '.join(FORMATS)}", markup=False)
        return 2
    try:
        report = report_from_args(args)
    except ReportError as exc:
        err.print(f"report: {exc}", markup=False, highlight=False)
        return 2
    from reports.render import render_csv, render_table

    if fmt == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    elif fmt == "csv":
        sys.stdout.write(render_csv(report))
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)  # piped or captured: wide enough for the tables
        render_table(report, console)
    return 0
