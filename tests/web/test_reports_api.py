"""GET /v1/reports/nps: basic auth, the same JSON as the CLI, clear 422s."""

from __future__ import annotations

import argparse
import csv
import io
import json

import pytest
from fastapi.testclient import TestClient

from cli.report import add_report_parser
from tests.conftest import Database
from tests.reports.test_report_db import START, check_headline, random_cases, seed
from web import reports
from web.app import create_app

AUTH = ("operator", "test-dashboard")


@pytest.fixture
def client(db: Database, runtime_for) -> TestClient:
    app = create_app(runtime_for(db))
    if not any(getattr(r, "path", None) == "/v1/reports/nps" for r in app.routes):
        app.include_router(reports.router)
    return TestClient(app)


@pytest.fixture
def cases(db: Database):
    population = random_cases(31, 250, START)
    seed(db, population)
    return population


def cli_json(argv: list[str], capsys) -> dict:
    root = argparse.ArgumentParser()
    add_report_parser(root.add_subparsers(dest="command"))
    args = root.parse_args(["report", "--format", "json", *argv])
    assert args.func(args) == 0
    report: dict = json.loads(capsys.readouterr().out)
    return report


def test_requires_the_dashboard_password(client):
    assert client.get("/v1/reports/nps").status_code == 401
    wrong = client.get("/v1/reports/nps", auth=("operator", "nope"))
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Basic")
    assert client.get("/v1/reports/nps", headers={"Authorization": "Basic !!"}).status_code == 401


def test_no_password_configured_refuses_everyone(sqlite_db: Database, runtime_for):
    app = create_app(runtime_for(sqlite_db, NPS_DASHBOARD_PASSWORD=""))
    app.include_router(reports.router)
    assert TestClient(app).get("/v1/reports/nps", auth=("x", "")).status_code == 401


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"by": "channel"},
        {"by": "week", "since": "2026-11-01", "until": "2026-11-15"},
        {
            "by": "delay",
            "since": "2026-11-05",
            "compare_since": "2026-11-01",
            "compare_until": "2026-11-05",
        },
    ],
)
def test_same_json_as_the_cli(client, cases, capsys, query):
    response = client.get("/v1/reports/nps", params=query, auth=AUTH)
    assert response.status_code == 200, response.text
    api = response.json()
    argv: list[str] = []
    for key, value in query.items():
        argv += [f"--{key.replace('_', '-')}", value]
    cli = cli_json(argv, capsys)
    api.pop("as_of")
    cli.pop("as_of")
    assert api == cli
    if not query:
        check_headline(api, cases)


def test_compare_false_and_csv(client, cases):
    params = {"since": "2026-11-08", "until": "2026-11-15"}
    assert client.get("/v1/reports/nps", params=params, auth=AUTH).json()["compare"] is not None
    off = client.get("/v1/reports/nps", params={**params, "compare": "false"}, auth=AUTH)
    assert off.json()["compare"] is None
    as_csv = client.get("/v1/reports/nps", params={"by": "channel", "format": "csv"}, auth=AUTH)
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["segment"] for r in rows] == ["all", "email", "sms"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"since": "2026-13-01"}, "since: '2026-13-01' is not a date; expected YYYY-MM-DD"),
        ({"until": "soon"}, "until: 'soon' is not a date"),
        ({"by": "colour"}, "by: 'colour' is not a segment"),
        ({"since": "2026-11-10", "until": "2026-11-01"}, "since (2026-11-10) must be before until"),
        ({"format": "xml"}, "format: 'xml' is not json or csv"),
        ({"compare": "maybe"}, "compare: 'maybe' is not true or false"),
        ({"colour": "red"}, "colour: unknown parameter"),
        ({"channel": "fax"}, "channel: 'fax' is not a channel"),
        ({"category": "x" * 65}, "category: longer than 64 characters"),
    ],
)
def test_bad_parameters_are_422_with_a_clear_message(client, query, message):
    response = client.get("/v1/reports/nps", params=query, auth=AUTH)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter" and message in error["message"]


def test_channel_and_category_filter_the_report(client, cases):
    everyone = client.get("/v1/reports/nps", params={"by": "channel"}, auth=AUTH).json()
    [sms] = [s for s in everyone["segments"] if s["key"] == "sms"]
    filtered = client.get("/v1/reports/nps", params={"channel": "sms"}, auth=AUTH).json()
    assert filtered["filters"] == {"channel": "sms", "category": None}
    assert (filtered["counts"], filtered["nps"]) == (sms["counts"], sms["nps"])
    books = client.get("/v1/reports/nps", params={"category": "books", "format": "csv"}, auth=AUTH)
    rows = list(csv.DictReader(io.StringIO(books.text)))
    expected = sum(
        1 for c in cases if c.category == "books" and c.responded and c.score is not None
    )
    assert rows[0]["segment"] == "all"
    assert (
        int(rows[0]["promoters"]) + int(rows[0]["passives"]) + int(rows[0]["detractors"])
        == expected
    )
