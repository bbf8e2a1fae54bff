"""The report's figures are those of the per-invitee computation.

``report_expected.json`` holds complete reports (overall and per segment: counts, NPS and
intervals, AAPOR rates, the propensity model's columns, the adjusted NPS, its interval, n_eff,
every SMD, the bounds, the warnings) over the populations below, on SQLite and PostgreSQL. The
report must reproduce them to 1e-9.

Everything but ``adjusted`` (and the ``bounds`` beside it) was computed by the report as it was
when it still fetched one row per invitee (commit bfd71d2). ``adjusted`` and ``bounds`` are the
model of the current specification (order value in steps of 0.1 on the log scale, whole days to
send capped at 60) fitted one row per invitee by the reference in ``tests/reports/stats/per_row``,
with covariates built per invitee from the population itself (``per_row/invitees.py``), not
from the report's SQL. ``python -m tests.reports.test_report_identity`` (with
``NPS_TEST_POSTGRES_URL`` set) rewrites the file that way: the report's counts, then the
reference's ``adjusted`` and ``bounds`` in every entry. Run it only when a figure is meant to
change.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config import OperatorConfig
from reports.build import build_report
from tests.conftest import Database
from tests.reports.stats.per_row import invitees as per_invitee
from tests.reports.test_report_db import (
    NOW,
    START,
    Case,
    random_cases,
    seed,
    segment_of,
)

EXPECTED = Path(__file__).with_name("report_expected.json")
TOLERANCE = 1e-9
SEGMENTS = (None, "channel", "category", "delay", "week")


def mixed() -> list[Case]:
    """Every state, skip and segment; discrete totals and delays, so invitees share patterns."""
    return random_cases(11, 400, START)


def modelled() -> list[Case]:
    """A biased population with continuous order totals and send delays."""
    rng = np.random.default_rng(5)
    cases = []
    for i in range(700):
        repeat = rng.random() < 0.4
        channel = "sms" if rng.random() < 0.4 else "email"
        total = float(np.round(np.exp(rng.normal(3.5, 0.9)), 2))
        p = 1 / (1 + math.exp(-(-1.0 + 1.5 * repeat - 0.5 * (channel == "sms") + 0.2 * i / 700)))
        answered = rng.random() < p
        score = int(np.clip(round(rng.normal(8.5 if repeat else 5.5, 2)), 0, 10))
        cases.append(
            Case(
                "completed" if answered else ("no_response" if i % 9 else "opted_out"),
                START + timedelta(hours=i * 0.37),
                score=score if answered else None,
                channel=channel,
                category=["books", "garden", "toys", None][i % 4],
                total=total,
                previous_orders=int(repeat) * (1 + i % 3),
                country=["DE", "AT", "RO"][i % 3],
                arm=str(rng.choice(["2d", "5d"])),
                anchor_hours=None if i % 23 == 0 else 48.0,
                delay_hours=float(np.round(rng.uniform(40, 180), 4)),
            )
        )
    return cases


def separated() -> list[Case]:
    """Only orders above 100 are answered: the numeric covariate separates, the ridge fits."""
    rng = np.random.default_rng(8)
    cases = []
    for i in range(300):
        total = float(np.round(rng.uniform(10, 200), 2))
        answered = total > 100
        cases.append(
            Case(
                "completed" if answered else "no_response",
                START + timedelta(hours=i),
                score=int(rng.integers(0, 11)) if answered else None,
                channel=["email", "sms"][i % 2],
                total=total,
                previous_orders=i % 3,
            )
        )
    return cases


POPULATIONS = {"mixed": mixed, "modelled": modelled, "separated": separated}


def reports_of(db: Database, config: OperatorConfig) -> dict[str, Any]:
    return {
        str(by): build_report(db.factory, config, by=by, now=NOW, compare=False) for by in SEGMENTS
    }


def constant_covariates(cases: list[Case]) -> set[str]:
    """The covariates every final invitation of ``cases`` has the same value of."""
    columns, _ = per_invitee.covariates(per_invitee.final_invitations(cases))
    return {name for name, values in columns.items() if len(set(values.tolist())) <= 1}


def assert_balance(got: dict[str, Any], expected: dict[str, Any], constant: set[str], path: str):
    """SMDs as the per-invitee figures, except for a covariate constant in the population: its
    mean difference over a zero spread is a ratio of rounding errors in the reference (any
    number, or null), and 0 and not flagged in the report."""
    assert [b["covariate"] for b in got["smd"]] == [b["covariate"] for b in expected["smd"]]
    for g, e in zip(got["smd"], expected["smd"], strict=True):
        name = e["covariate"].split("=")[0]
        if name not in constant:
            assert_same(g, e, f"{path}.smd.{e['covariate']}", TOLERANCE)
        else:
            assert (g["smd"], g["smd_weighted"], g["flagged"]) == (0.0, 0.0, False), path


def assert_report(got: dict[str, Any], expected: dict[str, Any], cases: list[Case], by, path):
    """The whole report as the per-invitee figures (see :func:`assert_balance` for the SMDs)."""
    entries = [(got, expected, cases)]
    for g, e in zip(got["segments"], expected["segments"], strict=True):
        assert g["key"] == e["key"], path
        entries.append((g, e, [c for c in cases if c.state and segment_of(c, by) == e["key"]]))
    for g, e, population in entries:
        where = f"{path}/{e.get('key', 'all')}"
        rest = {k: v for k, v in e.items() if k != "segments"}
        if e["adjusted"] is not None:
            assert_balance(g["adjusted"], e["adjusted"], constant_covariates(population), where)
            rest["adjusted"] = {k: v for k, v in e["adjusted"].items() if k != "smd"}
        assert_same(g, rest, where, TOLERANCE)


def assert_same(got: Any, expected: Any, path: str, tol: float) -> None:
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) >= set(expected), path
        for key, value in expected.items():
            assert_same(got[key], value, f"{path}.{key}", tol)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_same(g, e, f"{path}[{i}]", tol)
    elif isinstance(expected, float) and not isinstance(got, bool):
        assert isinstance(got, int | float), path
        assert math.isclose(got, expected, rel_tol=tol, abs_tol=tol), (path, got, expected)
    else:
        assert got == expected, (path, got, expected)


@pytest.mark.parametrize("name", sorted(POPULATIONS))
def test_report_reproduces_the_per_invitee_figures(db: Database, config, name):
    cases = POPULATIONS[name]()
    seed(db, cases)
    dialect = db.engine.dialect.name
    expected = json.loads(EXPECTED.read_text())[name][dialect]
    got = reports_of(db, config)
    for by, report in expected.items():
        segment = None if by == "None" else by
        assert_report(got[by], report, cases, segment, f"{name}/{dialect}/by={by}")
    adjusted = got["None"]["adjusted"]
    # Coarse covariates: invitees share rows.
    assert adjusted["model_rows"] < adjusted["n_invited"]
    if name == "separated":
        assert expected["None"]["adjusted"]["fit"] == "ridge"
    else:
        assert expected["None"]["adjusted"]["fit"] == "logit"


def with_reference_adjustment(
    reports: dict[str, Any], cases: list[Case], config: OperatorConfig
) -> dict[str, Any]:
    """``reports`` (by segment key) with every ``adjusted`` and ``bounds`` replaced by the
    per-invitee reference's (see the module docstring)."""
    from reports.build import bands_of

    bands = bands_of(config)
    for by, report in reports.items():
        segment = None if by == "None" else by
        entries = [(report, [c for c in cases if c.state])]
        entries += [
            (e, [c for c in cases if c.state and segment_of(c, segment) == e["key"]])
            for e in report["segments"]
        ]
        for entry, population in entries:
            entry["adjusted"] = per_invitee.adjusted(population, bands, entry)
            entry["bounds"] = entry["adjusted"]["bounds"]
    return reports


def write_expected() -> None:  # pragma: no cover - run by hand
    """Recompute ``report_expected.json``: the report's counts, the reference's adjustment."""
    import os
    import tempfile

    from sqlalchemy import text

    from models import Base
    from models.session import make_engine, make_session_factory
    from tests.conftest import sqlite_database

    config = _config()
    out: dict[str, Any] = {}
    pg_url = os.environ["NPS_TEST_POSTGRES_URL"]
    pg_engine = make_engine(pg_url)
    from migrations.runner import upgrade

    upgrade(pg_engine)
    for name, build in POPULATIONS.items():
        out[name] = {}
        with tempfile.TemporaryDirectory() as tmp:
            lite = sqlite_database(Path(tmp) / "expected.db")
            seed(lite, build())
            out[name]["sqlite"] = with_reference_adjustment(
                reports_of(lite, config), build(), config
            )
            lite.engine.dispose()
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with pg_engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        pg = Database(pg_engine, make_session_factory(pg_engine))
        seed(pg, build())
        out[name]["postgresql"] = with_reference_adjustment(reports_of(pg, config), build(), config)
    pg_engine.dispose()
    EXPECTED.write_text(json.dumps(out, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"wrote {EXPECTED}", file=sys.stderr)


def _config() -> OperatorConfig:
    from config import load_config

    defaults = load_config(None)
    return defaults.model_copy(
        update={"schedule": defaults.schedule.model_copy(update={"jitter": timedelta(0)})}
    )


if __name__ == "__main__":  # pragma: no cover
    write_expected()
