"""Every error answer of the JSON routes has one shape, through the real app:
``{"error": {"code", "message", "param"}}``, with the headers that go with its status. The
answer page and the dashboard, read in a browser, keep HTML pages."""

from __future__ import annotations

import logging

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from models.session import make_engine, make_session_factory
from tests.conftest import TEST_TOKEN, Database
from tests.factories import purchase
from web.app import create_app

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
OPERATOR = ("operator", "test-dashboard")
CLIENT = ("198.51.100.9", 40000)


def error_of(response, status: int, code: str) -> dict:
    """The error of an answer in the error shape, after checking status, type and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    error = body["error"]
    assert set(error) == {"code", "message", "param"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


@pytest.fixture
def client(db: Database, runtime_for) -> TestClient:
    return TestClient(create_app(runtime_for(db)))


def test_400_invalid_json(client):
    response = client.post("/v1/events", content=b"{not json", headers=AUTH)
    assert error_of(response, 400, "invalid_json")["param"] is None


@pytest.mark.parametrize(
    ("path", "kwargs", "challenge"),
    [
        ("/v1/events", {"headers": {"Authorization": "Bearer wrong"}}, "Bearer"),
        ("/v1/reports/nps", {"auth": ("operator", "wrong")}, 'Basic realm="nps-dispatch"'),
        ("/metrics", {}, 'Basic realm="nps-dispatch"'),
    ],
)
def test_401_keeps_its_challenge(client, path, kwargs, challenge):
    method = client.post if path == "/v1/events" else client.get
    response = method(path, **kwargs)
    error_of(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == challenge


@pytest.mark.parametrize(
    "path", ["/webhooks/twilio/status", "/webhooks/twilio/inbound", "/webhooks/sendgrid/events"]
)
def test_403_signature_failures(client, path):
    response = client.post(
        path,
        content=b"MessageSid=SM1&MessageStatus=delivered",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": "forged",
        },
    )
    error_of(response, 403, "signature_invalid")


def test_404_unknown_route_is_json_unless_the_client_asks_for_html(client):
    error = error_of(client.get("/v2/nothing"), 404, "not_found")
    assert error["message"] == "no route for /v2/nothing"
    error_of(client.get("/v1/nothing", headers={"Accept": "text/html"}), 404, "not_found")
    page = client.get("/nothing", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "<h1>404 Not Found</h1>" in page.text


def test_405_keeps_allow(client):
    response = client.get("/v1/events")
    error = error_of(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    assert error["message"] == "GET is not allowed here; allowed: POST"
    error_of(client.post("/healthz"), 405, "method_not_allowed")


def test_413_over_the_app_wide_cap_declared_or_streamed(client):
    body = b"[" + b" " * (3 * 1024 * 1024) + b"]"
    error_of(client.post("/v1/events", content=body, headers=AUTH), 413, "payload_too_large")

    def chunks():
        for _ in range(3):
            yield b" " * (1024 * 1024)

    streamed = client.post("/v1/events", content=chunks(), headers=AUTH)
    error = error_of(streamed, 413, "payload_too_large")
    assert error["message"] == f"request body larger than {2 * 1024 * 1024} bytes"


def test_413_over_a_route_cap(client):
    response = client.post(
        "/webhooks/twilio/status",
        content=b"x" * (65 * 1024),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    error_of(response, 413, "payload_too_large")


def test_413_on_the_answer_page_stays_a_page(client):
    response = client.post("/s/some-token", content=b"comment=" + b"x" * (3 * 1024 * 1024))
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("text/html")
    assert "request body larger than" in response.text


def test_422_an_event_names_its_field(client):
    event = purchase("E-1")
    event["customer"]["phone"] = 12
    error = error_of(client.post("/v1/events", json=event, headers=AUTH), 422, "invalid_event")
    assert error["param"] == "customer.phone"


def test_422_a_report_parameter_names_itself(client):
    response = client.get("/v1/reports/nps", params={"since": "soon"}, auth=OPERATOR)
    assert error_of(response, 422, "invalid_parameter")["param"] == "since"


def add_probe(app: FastAPI) -> None:
    """A route with a typed query parameter, so that FastAPI itself refuses a bad value."""

    @app.get("/v1/probe")
    def probe(count: int) -> dict[str, int]:
        return {"count": count}


def test_422_fastapi_request_validation(client):
    add_probe(client.app)
    error = error_of(client.get("/v1/probe", params={"count": "many"}), 422, "invalid_request")
    assert error["param"] == "count"
    assert error["message"].startswith("count: Input should be a valid integer")
    assert client.get("/v1/probe", params={"count": "3"}).json() == {"count": 3}


def test_409_a_reused_event_id(client):
    assert client.post("/v1/events", json=purchase("C-1", event_id="e-9"), headers=AUTH).is_success
    response = client.post("/v1/events", json=purchase("C-2", event_id="e-9"), headers=AUTH)
    assert error_of(response, 409, "conflict")["param"] == "event_id"


def test_429_keeps_retry_after(db: Database, runtime_for, redis_url):
    # The events bucket lives in Redis: fill it up as a client that just sent far too much would.
    runtime = runtime_for(db, NPS_BROKER_URL=redis_url)
    client = TestClient(create_app(runtime), client=CLIENT)
    shared = redis.Redis.from_url(redis_url)
    seconds, micros = shared.time()
    shared.set(f"nps:web-rate:events:{CLIENT[0]}", f"{seconds + micros / 1e6 + 60:.6f}", ex=120)
    response = client.post("/v1/events", json=purchase("L-1"), headers=AUTH)
    error = error_of(response, 429, "rate_limited")
    retry_after = int(response.headers["retry-after"])
    assert 50 <= retry_after <= 60
    assert error["message"] == f"too many requests; try again in {retry_after} s"
    shared.close()


def test_429_on_the_answer_page_stays_a_page(client):
    answers = TestClient(client.app, client=CLIENT)
    statuses = [answers.get("/s/not-a-token").status_code for _ in range(31)]
    assert statuses[-1] == 429
    limited = answers.get("/s/not-a-token")
    assert limited.headers["content-type"].startswith("text/html")
    assert int(limited.headers["retry-after"]) >= 1


@pytest.fixture
def broken_client(runtime_for):
    """The app over a database that refuses connections: every query raises."""
    url = "postgresql+psycopg://nps:hunter2-secret@127.0.0.1:1/nps_private"
    engine = make_engine(url)
    yield TestClient(create_app(runtime_for(Database(engine, make_session_factory(engine)))))
    engine.dispose()


SECRETS = ("hunter2", "127.0.0.1", "nps_private", "psycopg", "Operational")


def test_500_an_unexpected_error_says_nothing_of_its_cause(broken_client, caplog):
    caplog.set_level(logging.ERROR)
    response = broken_client.get("/v1/reports/nps", auth=OPERATOR)
    error = error_of(response, 500, "internal_error")
    assert error == {
        "code": "internal_error",
        "message": "an unexpected error on our side; the X-Request-ID header of this answer "
        "names it",
        "param": None,
    }
    assert response.headers["x-request-id"]
    for secret in SECRETS:
        assert secret not in response.text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET /v1/reports/nps failed: OperationalError" in logged
    assert "hunter2" not in logged and "nps_private" not in logged


def test_500_an_event_not_applied_is_in_the_error_shape_too(broken_client):
    event = purchase("U-1")
    response = broken_client.post("/v1/events", json=event, headers=AUTH)
    error = error_of(response, 500, "internal_error")
    assert error["message"].startswith("(event): could not be applied")
    assert (response.json()["event_id"], response.json()["status"]) == (
        event["event_id"],
        "rejected",
    )
    for secret in SECRETS:
        assert secret not in response.text


def test_500_on_the_dashboard_is_a_page(broken_client):
    response = broken_client.get("/dashboard", auth=OPERATOR)
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/html")
    assert "hunter2" not in response.text and "nps_private" not in response.text


def test_503_health_check_in_the_error_shape(broken_client):
    response = broken_client.get("/healthz")
    error = error_of(response, 503, "unavailable")
    assert response.json()["status"] == "failing"
    assert error["message"] == "a dependency of this service is failing"


def test_the_dashboard_keeps_an_html_401(client):
    response = client.get("/dashboard", headers={"Accept": "text/html"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="nps-dispatch"'
    assert response.headers["content-type"].startswith("text/html")
