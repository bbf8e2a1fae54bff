"""`nps-dispatch report` in an 80-column terminal: every line fits, no cell is cut short with an
ellipsis, flags stay on one line, long shop labels are kept whole (wrapped within their column)."""

from __future__ import annotations

import io
import re
from datetime import timedelta

from rich.console import Console

from reports.build import build_report
from reports.render import render_table
from tests.conftest import Database
from tests.reports.test_report_db import START, random_cases, seed

LONG_LABELS = (
    "Home & Garden > Outdoor Furniture > Lounge Sets",
    "consumer-electronics-accessories",
    "Gesundheit & Körperpflege",
)


def rendered(report: dict, width: int = 80) -> str:
    out = io.StringIO()
    render_table(report, Console(file=out, width=width, color_system=None, legacy_windows=False))
    return out.getvalue()


def test_every_section_fits_80_columns_with_long_labels(sqlite_db: Database, config):
    seed(sqlite_db, random_cases(23, 300, START))
    report = build_report(
        sqlite_db.factory,
        config,
        "2026-11-02",
        "2026-11-16",
        by="arm",
        now=START + timedelta(days=60),
    )
    assert report["segments"] and len(report["timing"]["by_arm"]) > 1
    assert report["timing"]["by_delay"]
    # Segment names come from the shop: make them as long as real category paths get.
    for segment, label in zip(report["segments"], LONG_LABELS, strict=False):
        segment["key"] = label
    report["by"] = "category"
    out = rendered(report)
    lines = out.splitlines()
    too_wide = [line for line in lines if len(line) > 80]
    assert too_wide == []
    assert "…" not in out
    for section in ("AAPOR outcome rates", "coverage", "by category", "timing by delay arm"):
        assert section in out
    # A label may wrap inside its column, but none is cut: its pieces, first on each line of
    # the segment table, put together give the whole label.
    block = out[out.index("by category") : out.index("answered of invited")]
    pieces = "".join(re.split(r"\s{2,}", line.strip())[0] for line in block.splitlines()[3:])
    for label in LONG_LABELS[: len(report["segments"])]:
        assert label.replace(" ", "") in pieces.replace(" ", ""), label
    # Flags are never wrapped: each flagged covariate's marker is whole on its line.
    flagged = [b for b in report["adjusted"]["smd"] if b["flagged"]]
    assert out.count("|SMD| > 0.1") >= len(flagged)
    # Values and their intervals are whole: every opening bracket closes on its own line.
    for line in lines:
        assert line.count("[") == line.count("]"), line
