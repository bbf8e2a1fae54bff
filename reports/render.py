"""The report for people (rich tables) and for spreadsheets (CSV), from the report dict.

Both read only the JSON shape of ``reports/REPORT_JSON.md``, so anything that can fetch
``GET /v1/reports/nps`` can render the same way.

The tables fit an 80-column terminal: no outer borders, a value and its interval in one cell
(the interval on a second line), numbers and flags never wrapped or cut, and only the labels
(segment names come from shop data and can be long) wrapped within their column.

CSV: one row per segment plus a first row whose ``segment`` is ``all``; columns
:data:`CSV_COLUMNS` (empty cell = undefined, e.g. an NPS without answers):

- ``segment``, ``n_surveys``, ``n_invited``, ``n_pending``, ``n_answered``
- ``promoters``, ``passives``, ``detractors``, ``nps``, ``nps_ci95_low``, ``nps_ci95_high``
- ``response_rate``, ``response_rate_ci95_low``, ``response_rate_ci95_high`` (answers over
  invitations with a final outcome, Wilson interval)
- ``RR1`` .. ``RR6``, ``COOP1`` .. ``COOP4``, ``REF1`` .. ``REF3``, ``CON1`` .. ``CON3``
- ``adjusted_nps``, ``adjusted_ci95_low``, ``adjusted_ci95_high``, ``n_eff``
- ``bound_worst``, ``bound_best``

Segment names come from shop data (a category, a country), and spreadsheets run a cell that
starts with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return) as a formula. Such a text
cell is written with a leading single quote (OWASP's advice against CSV injection), so
``=HYPERLINK(...)`` stays text; numbers, negative ones included, stay numbers.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from reports.stats.aapor import RATE_KEYS

CSV_COLUMNS: Final[tuple[str, ...]] = (
    "segment",
    "n_surveys",
    "n_invited",
    "n_pending",
    "n_answered",
    "promoters",
    "passives",
    "detractors",
    "nps",
    "nps_ci95_low",
    "nps_ci95_high",
    "response_rate",
    "response_rate_ci95_low",
    "response_rate_ci95_high",
    *RATE_KEYS,
    "adjusted_nps",
    "adjusted_ci95_low",
    "adjusted_ci95_high",
    "n_eff",
    "bound_worst",
    "bound_best",
)


# --------------------------------------------------------------------------- formatting


def _num(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{100 * value:.1f}%"


def _ci(pair: Sequence[float | None] | None, digits: int = 1) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return "-"
    return f"[{pair[0]:.{digits}f}, {pair[1]:.{digits}f}]"


def _ci_pct(pair: Sequence[float | None] | None) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return "-"
    return f"[{100 * pair[0]:.1f}%, {100 * pair[1]:.1f}%]"


def _period(period: Mapping[str, str | None]) -> str:
    since, until = period.get("since"), period.get("until")
    if since is None and until is None:
        return "all purchases"
    return f"purchases from {since or 'the start'} to {until or 'now'} (exclusive)"


# --------------------------------------------------------------------------- table


def _table(title: str) -> Table:
    """A compact table: a rule under the header, no borders, one space between columns."""
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )


def _label_column(table: Table, name: str) -> None:
    table.add_column(name, overflow="fold", ratio=1, min_width=8)


def _number_column(table: Table, name: str) -> None:
    table.add_column(name, justify="right", no_wrap=True)


def _with_ci(value: str, ci: str) -> str:
    return value if ci == "-" else f"{value}\n{ci}"


def _headline(report: Mapping[str, Any]) -> Panel:
    counts = report["counts"]
    rate = report["response_rate"]
    lines = Text()
    lines.append("NPS ", style="bold")
    lines.append(_num(report["nps"]), style="bold cyan")
    lines.append(f"  95% CI {_ci(report['nps_ci95'])}  n = {_num(counts['n'])}\n")
    lines.append(
        f"promoters {_num(counts['promoters'])}, passives {_num(counts['passives'])}, "
        f"detractors {_num(counts['detractors'])}\n"
    )
    lines.append(
        f"{_num(report['n_purchases'])} purchases, {_num(report['n_surveys'])} surveys, "
        f"{_num(report['n_invited'])} invited, {_num(report['n_answered'])} answered, "
        f"{_num(report['n_pending'])} pending (not yet sent or window still open)\n"
    )
    lines.append(
        f"response rate {_pct(rate['rate'])} {_ci_pct(rate['ci95'])} of "
        f"{_num(rate['nobs'])} invitations with a final outcome"
    )
    compare = report.get("compare")
    if compare and compare["nps"] is None:
        lines.append(f"\nvs {_period(compare['period'])}: no answers to compare with")
    elif compare:
        diff = compare["difference"]
        lines.append(
            f"\nvs {_period(compare['period'])}: NPS {_num(compare['nps'])} "
            f"(n = {_num(compare['counts']['n'])}); change {_num(diff['difference'])} "
            f"95% CI {_ci(diff['ci95'])}, z = {_num(diff['z'], 2)}, p = {_num(diff['p_value'], 3)}"
        )
    title = f"NPS report: {_period(report['period'])}"
    return Panel(lines, title=title, subtitle=f"as of {report['as_of']}", expand=False)


def _rates(report: Mapping[str, Any]) -> Group:
    rates = report["rates"]
    disp = report["dispositions"]
    table = _table("AAPOR outcome rates")
    table.add_column("rate", no_wrap=True)
    for i in range(1, 7):
        _number_column(table, str(i))
    for family, count in (("RR", 6), ("COOP", 4), ("REF", 3), ("CON", 3)):
        cells = [_pct(rates.get(f"{family}{i}")) for i in range(1, count + 1)]
        table.add_row(family, *cells, *([""] * (6 - count)))
    codes = ", ".join(f"{k} {disp[k]}" for k in ("I", "P", "R", "NC", "O", "UH", "UO", "NE"))
    e = rates.get("e")
    line = Text(
        f"AAPOR dispositions: {codes}; pending {disp['pending']} (not in the rates); "
        f"e = {_num(e, 3)}"
    )
    return Group(table, line)


def _adjusted(report: Mapping[str, Any]) -> Group:
    adj = report["adjusted"]
    bounds = report.get("bounds") or {}
    text = Text()
    text.append("non-response adjusted NPS ", style="bold")
    text.append(_num(adj["nps"]), style="bold magenta")
    text.append(
        f"  95% CI {_ci(adj['ci95'])}  raw {_num(adj['raw_nps'])}  "
        f"Kish n_eff {_num(adj['n_eff'])} of {_num(adj['n_respondents'])} answers, "
        f"{_num(adj['n_invited'])} invitees (model: {adj['fit']})\n"
    )
    text.append(
        f"bounds if every non-responder were a detractor / a promoter: "
        f"{_num(bounds.get('worst'))} / {_num(bounds.get('best'))}"
    )
    if adj.get("note"):
        style = "bold yellow" if adj.get("differs_from_raw") else ""
        text.append("\n" + adj["note"], style=style)
    for warning in adj.get("warnings", []):
        text.append(f"\nnote: {warning}", style="dim")
    smd = _table("")
    _label_column(smd, "covariate")
    _number_column(smd, "SMD")
    _number_column(smd, "weighted")
    smd.add_column("", no_wrap=True)
    for b in adj.get("smd", []):
        smd.add_row(
            b["covariate"],
            _num(b["smd"], 3),
            _num(b["smd_weighted"], 3),
            Text("|SMD| > 0.1", style="yellow") if b["flagged"] else "",
        )
    title = Text("responders vs non-responders: standardised mean difference (SMD)")
    return Group(text, title, smd)


def _coverage(report: Mapping[str, Any]) -> Table:
    cov = report["coverage"]
    purchases = cov["purchases"]
    table = _table("coverage: every purchase, step by step")
    table.add_column("step", overflow="fold", max_width=18)
    _number_column(table, "n")
    _number_column(table, "share")
    _number_column(table, "lost")
    table.add_column("why", ratio=1, min_width=16)
    table.add_row("purchases", _num(purchases), _pct(1.0 if purchases else None), "", "")
    for step in cov["steps"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in step["reasons"].items())
        table.add_row(
            step["step"],
            _num(step["n"]),
            _pct(step["n"] / purchases if purchases else None),
            _num(step["lost"]),
            reasons,
        )
    return table


def _segments(report: Mapping[str, Any]) -> Group:
    table = _table(f"by {report['by']}")
    _label_column(table, report["by"])
    _number_column(table, "answered")
    _number_column(table, "NPS, 95% CI")
    _number_column(table, "response")
    _number_column(table, "adjusted")
    _number_column(table, "flags")
    for seg in report["segments"]:
        adj = seg.get("adjusted") or {}
        flags = sum(1 for b in adj.get("smd", []) if b["flagged"])
        table.add_row(
            seg["key"],
            f"{_num(seg['n_answered'])}\nof {_num(seg['n_invited'])}",
            _with_ci(_num(seg["nps"]), _ci(seg["nps_ci95"])),
            _with_ci(_pct(seg["response_rate"]["rate"]), f"RR2 {_pct(seg['rates']['RR2'])}"),
            _with_ci(_num(adj.get("nps")), _ci(adj.get("ci95"))),
            str(flags) if flags else "",
        )
    note = Text(
        "answered of invited; adjusted: the non-response adjusted NPS and its 95% CI; flags: "
        "covariates on which responders and non-responders differ (|SMD| > 0.1)",
        style="dim",
    )
    return Group(table, note)


def _timing(title: str, groups: Sequence[Mapping[str, Any]], reference: str | None) -> Table:
    table = _table(f"{title} (vs {reference})")
    _label_column(table, "group")
    _number_column(table, "invited")
    _number_column(table, "NPS, 95% CI")
    _number_column(table, "response, 95% CI")
    _number_column(table, "vs ref")
    _number_column(table, "p")
    for g in groups:
        vs = g.get("vs_reference") or {}
        table.add_row(
            g["label"],
            _num(g["response_rate"]["nobs"]),
            _with_ci(_num(g["nps"]["nps"]), _ci(g["nps"]["ci95"])),
            _with_ci(_pct(g["response_rate"]["rate"]), _ci_pct(g["response_rate"]["ci95"])),
            _num(vs.get("difference")) if vs else "ref",
            _num(vs.get("p_value"), 3) if vs else "",
        )
    return table


def render_table(report: Mapping[str, Any], console: Console) -> None:
    """Print the report as rich tables."""
    console.print(_headline(report))
    console.print(_rates(report))
    console.print(_adjusted(report))
    console.print(_coverage(report))
    if report.get("segments"):
        console.print(_segments(report))
    timing = report.get("timing") or {}
    if len(timing.get("by_arm", [])) > 1:
        console.print(_timing("timing by delay arm", timing["by_arm"], timing["reference_arm"]))
    if timing.get("by_delay"):
        console.print(
            _timing(
                "timing by whole days from anchor to send",
                timing["by_delay"],
                timing["reference_delay"],
            )
        )


# --------------------------------------------------------------------------- CSV


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def csv_cell(value: object) -> object:
    """``value`` safe to open in a spreadsheet: text that would start a formula gets a leading
    single quote; numbers, and text that is just a number such as ``-12.5``, are left alone."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    if _PLAIN_NUMBER.fullmatch(value):
        return value
    return "'" + value


def _csv_row(key: str, entry: Mapping[str, Any]) -> dict[str, object]:
    counts = entry["counts"]
    rate = entry["response_rate"]
    adj = entry.get("adjusted") or {}
    bounds = entry.get("bounds") or {}
    nps_ci = entry.get("nps_ci95") or (None, None)
    rate_ci = rate.get("ci95") or (None, None)
    adj_ci = adj.get("ci95") or (None, None)
    row: dict[str, object] = {
        "segment": key,
        "n_surveys": entry["n_surveys"],
        "n_invited": entry["n_invited"],
        "n_pending": entry["n_pending"],
        "n_answered": entry["n_answered"],
        "promoters": counts["promoters"],
        "passives": counts["passives"],
        "detractors": counts["detractors"],
        "nps": entry["nps"],
        "nps_ci95_low": nps_ci[0],
        "nps_ci95_high": nps_ci[1],
        "response_rate": rate["rate"],
        "response_rate_ci95_low": rate_ci[0],
        "response_rate_ci95_high": rate_ci[1],
        **{key: entry["rates"].get(key) for key in RATE_KEYS},
        "adjusted_nps": adj.get("nps"),
        "adjusted_ci95_low": adj_ci[0],
        "adjusted_ci95_high": adj_ci[1],
        "n_eff": adj.get("n_eff"),
        "bound_worst": bounds.get("worst"),
        "bound_best": bounds.get("best"),
    }
    return {k: ("" if v is None else csv_cell(v)) for k, v in row.items()}


def render_csv(report: Mapping[str, Any]) -> str:
    """The ``all`` row, then one row per segment (columns: :data:`CSV_COLUMNS`); lines end in
    CRLF, so that a cell holding a line break or carriage return is quoted and stays one cell."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerow(_csv_row("all", report))
    for seg in report.get("segments", []):
        writer.writerow(_csv_row(seg["key"], seg))
    return out.getvalue()
