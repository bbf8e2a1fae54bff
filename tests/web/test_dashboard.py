"""GET /dashboard: operators only, and it shows the report's own figures."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from ingest.service import ingest_event
from tests.conftest import Database
from tests.factories import purchase
from web.app import create_app


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()}


@pytest.fixture
def client(sqlite_db: Database, runtime_for):
    return TestClient(create_app(runtime_for(sqlite_db)))


def test_dashboard_needs_the_operator_password(client):
    assert client.get("/dashboard").status_code == 401
    assert client.get("/dashboard", headers=basic("wrong")).status_code == 401


def test_dashboard_shows_the_funnel(client, sqlite_db, config, now):
    ingest_event(sqlite_db.factory, purchase("D-1", at=now), config, now)
    ingest_event(
        sqlite_db.factory, purchase("D-2", customer_id="c-2", at=now, test=True), config, now
    )
    page = client.get(
        "/dashboard",
        params={"since": "2026-11-01", "until": "2026-12-01", "by": "channel"},
        headers=basic("test-dashboard"),
    )
    assert page.status_code == 200
    assert "NPS dashboard" in page.text
    assert "excluded_test_order 1" in page.text  # the skipped purchase, with its reason
    assert "<td>purchases</td><td>2</td>" in page.text


def test_dashboard_bad_date_is_422(client):
    page = client.get("/dashboard", params={"since": "yesterday"}, headers=basic("test-dashboard"))
    assert page.status_code == 422
    assert "since" in page.text
