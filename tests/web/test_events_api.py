"""POST /v1/events: auth, per-item answers, junk input, nothing half-written."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from models import Customer, InboundEvent, Order, Survey
from tests.conftest import TEST_TOKEN, Database
from tests.factories import purchase
from web.app import create_app

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


@pytest.fixture
def client(db: Database, runtime_for):
    return TestClient(create_app(runtime_for(db)))


@pytest.fixture
def sqlite_client(sqlite_db: Database, runtime_for):
    return TestClient(create_app(runtime_for(sqlite_db)))


def rows(db: Database, model) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_single_event_accepted_then_duplicate(client, db):
    event = purchase("H-1")
    first = client.post("/v1/events", json=event, headers=AUTH)
    assert first.status_code == 200
    assert first.json() == {"event_id": event["event_id"], "status": "accepted"}
    second = client.post("/v1/events", json=event, headers=AUTH)
    assert second.json() == {"event_id": event["event_id"], "status": "duplicate"}
    assert rows(db, Survey) == 1 and rows(db, InboundEvent) == 1


def test_batch_answers_per_item_and_processes_the_good_ones(client, db):
    good = purchase("H-2")
    bad = purchase("H-3")
    bad["customer"]["previous_orders"] = "many"
    del bad["total"]
    response = client.post("/v1/events", json=[good, bad, good], headers=AUTH)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "duplicate"]
    assert results[1]["event_id"] == bad["event_id"]
    assert "customer.previous_orders" in results[1]["error"]
    assert "total: Field required" in results[1]["error"]
    with db.session() as s:
        assert s.scalars(select(Order.external_id)).all() == ["H-2"]


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", "Basic " + "dGVzdDp0ZXN0", f"bearer{TEST_TOKEN}", "Bearer "],
)
def test_wrong_or_missing_token_is_401(sqlite_client, sqlite_db, header):
    headers = {"Authorization": header} if header else {}
    response = sqlite_client.post("/v1/events", json=purchase("H-4"), headers=headers)
    assert response.status_code == 401
    assert rows(sqlite_db, InboundEvent) == 0


def test_non_json_body_is_400(sqlite_client, sqlite_db):
    response = sqlite_client.post("/v1/events", content=b"{not json", headers=AUTH)
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]
    assert rows(sqlite_db, InboundEvent) == 0


def test_1001_events_is_413_and_writes_nothing(sqlite_client, sqlite_db):
    batch = [purchase(f"X-{i}") for i in range(1001)]
    response = sqlite_client.post("/v1/events", json=batch, headers=AUTH)
    assert response.status_code == 413
    assert "at most 1000" in response.json()["error"]
    assert rows(sqlite_db, Order) == 0


def test_1000_events_are_taken(sqlite_client, sqlite_db):
    batch = [purchase(f"Y-{i}", customer_id=f"c-{i}") for i in range(1000)]
    response = sqlite_client.post("/v1/events", json=batch, headers=AUTH)
    assert response.status_code == 200
    assert rows(sqlite_db, Order) == 1000 and rows(sqlite_db, Survey) == 1000


def test_10_mb_body_is_413(sqlite_client, sqlite_db):
    body = b"[" + b" " * (10 * 1024 * 1024) + b"]"
    response = sqlite_client.post("/v1/events", content=body, headers=AUTH)
    assert response.status_code == 413
    assert rows(sqlite_db, InboundEvent) == 0


@pytest.mark.parametrize(
    ("body", "status"),
    [("[]", 422), ('"hello"', 422), ("42", 422), ("null", 422), ('[1, "x"]', 422)],
)
def test_wrong_shapes_are_422(sqlite_client, sqlite_db, body, status):
    response = sqlite_client.post("/v1/events", content=body.encode(), headers=AUTH)
    assert response.status_code == status
    assert rows(sqlite_db, InboundEvent) == 0


def test_field_errors_name_the_path(sqlite_client):
    event = purchase("H-5")
    event["occurred_at"] = "2026-11-20T10:00:00"  # no offset
    event["total"]["amount"] = 12.5
    event["customer"]["timezone"] = "Mars/Olympus"
    response = sqlite_client.post("/v1/events", json=event, headers=AUTH)
    assert response.status_code == 422
    error = response.json()["error"]
    assert "occurred_at: Input should have timezone info" in error
    assert "total.amount: give the amount as a string" in error
    assert "customer.timezone: unknown IANA time zone 'Mars/Olympus'" in error


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["purchase.completed", "order.delivered", "consent.revoked", "customer.erased", "nope"]
        ),
        "event_id": st.text(max_size=5) | st.integers(),
    },
    optional={
        "occurred_at": st.text(max_size=25),
        "order_id": json_values,
        "customer": json_values,
        "total": json_values,
        "consent": json_values,
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=st.lists(event_like | json_values, min_size=1, max_size=5))
def test_junk_never_half_writes(sqlite_client, sqlite_db, items):
    before = rows(sqlite_db, InboundEvent)
    response = sqlite_client.post("/v1/events", content=json.dumps(items), headers=AUTH)
    assert response.status_code in (200, 422)
    body = response.json()
    results = body.get("results", [body] if "status" in body else [])
    for result in results:
        assert result["status"] in ("accepted", "duplicate", "rejected")
        if result["status"] == "rejected":
            assert ":" in result["error"]  # "field.path: reason"
    accepted = sum(r["status"] == "accepted" for r in results)
    # Exactly one ledger row per accepted event; a rejected one wrote nothing at all.
    assert rows(sqlite_db, InboundEvent) == before + accepted


def test_rejected_item_leaves_no_customer_behind(sqlite_client, sqlite_db):
    event = purchase("H-9", customer_id="ghost")
    event["total"] = {"amount": "-5", "currency": "EUR"}
    response = sqlite_client.post("/v1/events", json=[event], headers=AUTH)
    assert response.json()["results"][0]["status"] == "rejected"
    with sqlite_db.session() as s:
        assert s.scalar(select(func.count()).select_from(Customer)) == 0


def test_health_and_metrics(sqlite_client, sqlite_db, frozen_clock):
    # Planned at NOW, before the anchor time-out has passed: the survey still waits for delivery.
    sqlite_client.post(
        "/v1/events", json=[purchase("M-1"), purchase("M-2", test=True)], headers=AUTH
    )
    health = sqlite_client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    metrics = sqlite_client.get("/metrics").text
    assert 'nps_surveys{state="waiting_anchor"} 1.0' in metrics
    assert 'nps_skipped_purchases{reason="excluded_test_order"} 1.0' in metrics
    assert "nps_dead_letters 0.0" in metrics
