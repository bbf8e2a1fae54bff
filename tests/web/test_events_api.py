"""POST /v1/events: auth, per-item answers and outcomes, junk input, nothing half-written."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from models import ConsentRecord, Customer, InboundEvent, Order, SkippedPurchase, Survey
from tests.conftest import TEST_TOKEN, Database
from tests.factories import consent_event, erased, order_event, purchase
from tests.ingest.faults import TRIGGER_SECRET, surveys_refused_for_fail_orders
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


def test_single_event_accepted_then_duplicate(client, db, frozen_clock):
    event = purchase("H-1")
    first = client.post("/v1/events", json=event, headers=AUTH)
    assert first.status_code == 200
    # No delivery yet: the survey waits for it, at the latest until the 10-day anchor time-out.
    assert first.json() == {
        "event_id": event["event_id"],
        "status": "accepted",
        "outcome": {
            "result": "planned",
            "survey_state": "waiting_anchor",
            "channel": "email",
            "due_at": "2026-11-30T10:00:00Z",
        },
    }
    with db.session() as s:
        survey = s.scalar(select(Survey))
        assert (survey.state, survey.channel) == ("waiting_anchor", "email")
        assert survey.due_at.isoformat() == "2026-11-30T10:00:00+00:00"
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
    assert [(e["code"], e["param"]) for e in results[1]["errors"]] == [
        ("invalid_format", "customer.previous_orders"),
        ("required", "total"),
    ]
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
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"
    assert rows(sqlite_db, InboundEvent) == 0


def test_non_json_body_is_400(sqlite_client, sqlite_db):
    response = sqlite_client.post("/v1/events", content=b"{not json", headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and "not valid JSON" in error["message"]
    assert rows(sqlite_db, InboundEvent) == 0


def test_1001_events_is_413_and_writes_nothing(sqlite_client, sqlite_db):
    batch = [purchase(f"X-{i}") for i in range(1001)]
    response = sqlite_client.post("/v1/events", json=batch, headers=AUTH)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "batch_too_large" and "at most 1000" in error["message"]
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
    assert response.json()["error"]["code"] == "payload_too_large"
    assert rows(sqlite_db, InboundEvent) == 0


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("[]", "invalid_request"),
        ('"hello"', "invalid_request"),
        ("42", "invalid_request"),
        ("null", "invalid_request"),
        ('[1, "x"]', "invalid_event"),
    ],
)
def test_wrong_shapes_are_422(sqlite_client, sqlite_db, body, code):
    response = sqlite_client.post("/v1/events", content=body.encode(), headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code
    assert rows(sqlite_db, InboundEvent) == 0


def test_an_array_of_rejected_events_is_422_with_every_result(sqlite_client, sqlite_db):
    response = sqlite_client.post("/v1/events", content=b'[1, {"type": "nope"}]', headers=AUTH)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == {
        "code": "invalid_event",
        "message": "every event of the array was rejected; see each result's errors",
        "param": None,
    }
    assert [r["errors"] for r in body["results"]] == [
        [{"code": "invalid_type", "message": "expected a JSON object, got int", "param": None}],
        [
            {
                "code": "invalid_choice",
                "message": "must be one of purchase.completed, order.fulfilled, "
                "order.delivered, order.cancelled, order.refunded, consent.granted, "
                "consent.revoked, customer.erased; got 'nope'",
                "param": "type",
            }
        ],
    ]


def test_field_errors_name_the_path(sqlite_client):
    event = purchase("H-5")
    event["occurred_at"] = "2026-11-20T10:00:00"  # no offset
    event["total"]["amount"] = 12.5
    event["customer"]["timezone"] = "Mars/Olympus"
    response = sqlite_client.post("/v1/events", json=event, headers=AUTH)
    assert response.status_code == 422
    body = response.json()
    assert (body["event_id"], body["status"]) == (event["event_id"], "rejected")
    error = body["error"]
    assert (error["code"], error["param"]) == ("invalid_event", "occurred_at")
    assert "occurred_at: Input should have timezone info" in error["message"]
    assert "total.amount: give the amount as a string" in error["message"]
    assert "customer.timezone: unknown IANA time zone 'Mars/Olympus'" in error["message"]
    assert sorted((e["param"], e["code"]) for e in body["errors"]) == [
        ("customer.timezone", "unknown_time_zone"),
        ("occurred_at", "invalid_format"),
        ("total.amount", "amount_not_string"),
    ]


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
    if "status" in body:  # a single event: when not taken, its error in the error shape
        results = [body]
        summaries = [body["error"]["message"]] if "error" in body else []
    else:
        results = body["results"]
        summaries = [r["error"] for r in results if "error" in r]
    for result in results:
        assert result["status"] in ("accepted", "duplicate", "conflict", "rejected")
        if result["status"] in ("conflict", "rejected"):
            assert result["errors"] and all(
                set(e) == {"code", "message", "param"} for e in result["errors"]
            )
        else:
            assert "errors" not in result
    for summary in summaries:
        assert ":" in summary  # "field.path: reason"
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
    metrics = sqlite_client.get("/metrics", auth=("operator", "test-dashboard")).text
    assert 'nps_surveys{state="waiting_anchor"} 1.0' in metrics
    assert 'nps_skipped_purchases{reason="excluded_test_order"} 1.0' in metrics
    assert "nps_dead_letters 0.0" in metrics


def ledger(db: Database) -> list[str]:
    with db.session() as s:
        return sorted(s.scalars(select(InboundEvent.external_id)))


def orders(db: Database) -> list[str]:
    with db.session() as s:
        return sorted(s.scalars(select(Order.external_id)))


def test_a_purchase_dated_year_9999_does_not_sink_its_batch(client, db, frozen_clock):
    good = purchase("B-1", customer_id="c-good")
    far = purchase("B-2", customer_id="c-far", at="9999-12-31T23:59:59Z")
    response = client.post("/v1/events", json=[good, far], headers=AUTH)
    assert response.status_code == 200
    reason = "must not be more than 1 day after the time of ingest (2026-11-20T10:00:00Z)"
    assert response.json()["results"] == [
        {
            "event_id": good["event_id"],
            "status": "accepted",
            "outcome": {
                "result": "planned",
                "survey_state": "waiting_anchor",
                "channel": "email",
                "due_at": "2026-11-30T10:00:00Z",
            },
        },
        {
            "event_id": far["event_id"],
            "status": "rejected",
            "error": f"occurred_at: {reason}",
            "errors": [{"code": "time_out_of_range", "message": reason, "param": "occurred_at"}],
        },
    ]
    assert orders(db) == ["B-1"] and ledger(db) == [good["event_id"]]
    with db.session() as s:
        assert s.scalars(select(Customer.external_id)).all() == ["c-good"]


def test_a_consent_captured_before_2000_is_rejected_with_its_path(client, db, frozen_clock):
    event = purchase("B-3", consent={"email": True, "captured_at": "1999-12-31T23:59:59Z"})
    response = client.post("/v1/events", json=event, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "invalid_event",
        "message": "consent.captured_at: must not be before 2000-01-01T00:00:00Z",
        "param": "consent.captured_at",
    }
    assert orders(db) == []


def test_an_item_failing_to_apply_is_rejected_alone_and_the_rest_commits(client, db, caplog):
    first = purchase("B-4", customer_id="c-4")
    failing = purchase("FAIL-5", customer_id="c-5")
    last = purchase("B-6", customer_id="c-6")
    with surveys_refused_for_fail_orders(db):
        response = client.post("/v1/events", json=[first, failing, last], headers=AUTH)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "accepted"]
    assert results[1]["event_id"] == failing["event_id"]
    assert results[1]["error"].startswith("(event): could not be applied")
    assert [(e["code"], e["param"]) for e in results[1]["errors"]] == [("internal_error", None)]
    everything_said = response.text + "\n".join(r.getMessage() for r in caplog.records)
    for secret in (TRIGGER_SECRET, "INSERT", "ana@example.com", "+40721000111"):
        assert secret not in everything_said
    # Nothing half-written: not the ledger row, customer, consent or order of the failed item.
    assert orders(db) == ["B-4", "B-6"]
    assert ledger(db) == sorted([first["event_id"], last["event_id"]])
    with db.session() as s:
        assert sorted(s.scalars(select(Customer.external_id))) == ["c-4", "c-6"]
        evidence = set(s.scalars(select(ConsentRecord.evidence_ref)))
        assert evidence == {first["event_id"], last["event_id"]}
        assert s.scalar(select(func.count()).select_from(Survey)) == 2


def test_a_single_event_failing_to_apply_is_500_and_writes_nothing(client, db):
    failing = purchase("FAIL-7", customer_id="c-7")
    with surveys_refused_for_fail_orders(db):
        response = client.post("/v1/events", json=failing, headers=AUTH)
    assert response.status_code == 500
    body = response.json()
    assert body["status"] == "rejected"
    assert body["error"]["code"] == "internal_error"
    assert body["error"]["message"].startswith("(event): could not be applied")
    assert TRIGGER_SECRET not in response.text
    assert orders(db) == [] and ledger(db) == [] and rows(db, Customer) == 0
    # Nothing was kept, so sending it again once the cause is gone takes it.
    again = client.post("/v1/events", json=failing, headers=AUTH)
    assert again.status_code == 200 and again.json()["status"] == "accepted"


def test_an_event_id_reused_for_another_event_is_409_conflict(client, db, frozen_clock):
    bought = purchase("B-8", event_id="evt-b8")
    assert client.post("/v1/events", json=bought, headers=AUTH).status_code == 200
    cancelled = order_event("cancelled", "B-8", event_id="evt-b8")
    response = client.post("/v1/events", json=cancelled, headers=AUTH)
    assert response.status_code == 409
    body = response.json()
    assert (body["event_id"], body["status"]) == ("evt-b8", "conflict")
    assert (body["error"]["code"], body["error"]["param"]) == ("conflict", "event_id")
    assert body["error"]["message"].startswith("event_id: already used by a different event")
    assert [(e["code"], e["param"]) for e in body["errors"]] == [("conflict", "event_id")]
    # The cancellation was not applied: the survey still goes out.
    with db.session() as s:
        assert s.scalar(select(Survey.state)) == "waiting_anchor"
        assert s.scalar(select(Order.cancelled_at)) is None


def test_a_conflict_inside_a_batch_is_answered_per_item(client, db):
    bought = purchase("B-9", event_id="evt-b9")
    other = purchase("B-10", customer_id="c-10", event_id="evt-b9")
    fresh = purchase("B-11", customer_id="c-11")
    response = client.post("/v1/events", json=[bought, other, fresh], headers=AUTH)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "conflict", "accepted"]
    assert results[1]["error"].startswith("event_id:")
    assert results[1]["errors"][0]["param"] == "event_id"
    assert orders(db) == ["B-11", "B-9"]


def test_the_same_event_written_differently_is_a_duplicate(client, db):
    event = purchase("B-12", event_id="evt-b12", amount="129.90")
    assert client.post("/v1/events", json=event, headers=AUTH).status_code == 200
    again = dict(reversed(list(event.items())))
    again["total"] = {"currency": "EUR", "amount": "129.9"}
    body = json.dumps(again, indent=3, separators=(" ,  ", " :  ")).encode()
    response = client.post("/v1/events", content=body, headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"event_id": "evt-b12", "status": "duplicate"}


# -- what each item did --------------------------------------------------------------------------


def test_each_item_says_what_happened(client, db, frozen_clock):
    planned = purchase("O-1", customer_id="c-1")
    unreachable = purchase("O-2", customer_id="c-2", phone="12345", email="not-an-email")
    reused = purchase("O-3", customer_id="c-3", event_id=planned["event_id"])
    broken = purchase("O-4", customer_id="c-4")
    broken["customer"]["phone"] = 40721000111
    broken["occurred_at"] = "yesterday"
    response = client.post(
        "/v1/events", json=[planned, unreachable, planned, reused, broken], headers=AUTH
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [
        "accepted",
        "accepted",
        "duplicate",
        "conflict",
        "rejected",
    ]
    assert results[0]["outcome"] == {
        "result": "planned",
        "survey_state": "waiting_anchor",
        "channel": "email",
        "due_at": "2026-11-30T10:00:00Z",
    }
    # Consent for email only, and the address is not one: recorded as an invalid contact.
    assert results[1]["outcome"] == {
        "result": "skipped",
        "reason": "invalid_contact",
        "detail": None,
    }
    assert "outcome" not in results[2] and "errors" not in results[2]
    assert results[3]["errors"][0]["param"] == "event_id"
    assert "outcome" not in results[3]
    assert sorted((e["param"], e["code"]) for e in results[4]["errors"]) == [
        ("customer.phone", "invalid_type"),
        ("occurred_at", "invalid_format"),
    ]
    with db.session() as s:
        skips = s.execute(
            select(Order.external_id, SkippedPurchase.reason).join(
                SkippedPurchase, SkippedPurchase.order_id == Order.id
            )
        ).all()
        assert [tuple(row) for row in skips] == [("O-2", "invalid_contact")]
        assert sorted(s.scalars(select(Customer.external_id))) == ["c-1", "c-2"]
    assert orders(db) == ["O-1", "O-2"]


def test_order_consent_and_erasure_events_say_what_they_did(client, db, frozen_clock):
    # Dated before the (frozen) clock, so that each consent record takes effect when it says.
    batch = [
        purchase("W-1", customer_id="c-w", at="2026-11-20T08:00:00Z"),
        order_event("delivered", "W-1", at="2026-11-20T10:00:00Z"),
        order_event("delivered", "W-9", at="2026-11-20T10:00:00Z"),
        purchase("W-2", customer_id="c-x"),
        order_event("cancelled", "W-2", at="2026-11-20T10:00:00Z"),
        order_event("refunded", "W-2", at="2026-11-20T10:00:00Z"),
        consent_event("revoked", "c-w", at="2026-11-20T09:00:00Z", email=False),
        consent_event("granted", "c-w", at="2026-11-20T09:30:00Z", sms=True),
        purchase("W-3", customer_id="c-y"),
        erased("c-y", at="2026-11-20T11:00:00Z"),
        consent_event("revoked", "c-y", at="2026-11-20T10:30:00Z", email=False),
        purchase("W-1", customer_id="c-w"),
    ]
    response = client.post("/v1/events", json=batch, headers=AUTH)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted"] * len(batch)
    outcomes = [r["outcome"] for r in results]
    with db.session() as s:
        due = s.scalar(
            select(Survey.due_at).join(Order).where(Order.external_id == "W-1")
        ).isoformat()
    assert outcomes[1] == {
        "result": "recorded",
        "purchase_recorded": True,
        "survey_state": "scheduled",
        "due_at": due.replace("+00:00", "Z"),
    }
    assert outcomes[2] == {
        "result": "recorded",
        "purchase_recorded": False,
        "survey_state": None,
        "due_at": None,
    }
    assert outcomes[4] == {"result": "withdrawn", "surveys": 1}
    assert outcomes[5] == {
        "result": "recorded",
        "purchase_recorded": True,
        "survey_state": "withdrawn",
        "due_at": outcomes[5]["due_at"],
    }
    assert outcomes[6] == {
        "result": "revoked",
        "consent": {"email": False},
        "surveys_suppressed": 1,
        "surveys_moved": 0,
    }
    assert outcomes[7] == {
        "result": "granted",
        "consent": {"sms": True},
        "surveys_suppressed": 0,
        "surveys_moved": 0,
    }
    assert outcomes[9] == {"result": "erased", "surveys_withdrawn": 1}
    assert outcomes[10] == {"result": "ignored", "reason": "customer_erased"}
    assert outcomes[11] == {"result": "ignored", "reason": "order_already_recorded"}
    with db.session() as s:
        states = dict(s.execute(select(Order.external_id, Survey.state).join(Survey)).all())
        assert states == {"W-1": "suppressed", "W-2": "withdrawn", "W-3": "withdrawn"}


def test_consent_revoked_with_false_revokes_and_stops_the_survey(client, db, frozen_clock):
    client.post("/v1/events", json=purchase("R-1", customer_id="c-r"), headers=AUTH)
    revoke = consent_event("revoked", "c-r", email=False)
    response = client.post("/v1/events", json=revoke, headers=AUTH)
    assert response.status_code == 200
    assert response.json()["outcome"]["result"] == "revoked"
    with db.session() as s:
        latest = s.execute(
            select(ConsentRecord.granted).where(ConsentRecord.evidence_ref == revoke["event_id"])
        ).all()
        assert [tuple(row) for row in latest] == [(False,)]
        assert s.scalar(select(Survey.state)) == "suppressed"


@pytest.mark.parametrize(
    ("kind", "channels", "param", "code"),
    [
        ("revoked", {"email": True}, "consent.email", "consent_contradicts_type"),
        ("granted", {"email": True, "sms": False}, "consent.sms", "consent_contradicts_type"),
        ("revoked", {}, "consent", "consent_channel_required"),
    ],
)
def test_a_consent_value_contradicting_its_event_is_rejected_and_writes_nothing(
    client, db, frozen_clock, kind, channels, param, code
):
    event = consent_event(kind, "c-z", **channels)
    response = client.post("/v1/events", json=event, headers=AUTH)
    assert response.status_code == 422
    body = response.json()
    assert (body["error"]["code"], body["error"]["param"]) == ("invalid_event", param)
    assert [(e["code"], e["param"]) for e in body["errors"]] == [(code, param)]
    if code == "consent_contradicts_type":
        verb = "revoke" if kind == "revoked" else "grant"
        assert f"contradicts consent.{kind}" in body["errors"][0]["message"]
        assert f"to {verb} it" in body["errors"][0]["message"]
    assert rows(db, Customer) == 0 and rows(db, ConsentRecord) == 0
    assert rows(db, InboundEvent) == 0


def test_a_contradicting_consent_in_a_batch_leaves_no_trace_beside_the_good_items(
    client, db, frozen_clock
):
    good = consent_event("revoked", "c-good", email=False, sms=False)
    bad = consent_event("revoked", "c-bad", email=False, sms=True)
    response = client.post("/v1/events", json=[good, bad], headers=AUTH)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected"]
    assert results[1]["error"].startswith("consent.sms: true contradicts consent.revoked")
    with db.session() as s:
        assert s.scalars(select(Customer.external_id)).all() == ["c-good"]
        granted = s.execute(select(ConsentRecord.channel, ConsentRecord.granted)).all()
        assert sorted(tuple(row) for row in granted) == [("email", False), ("sms", False)]
    assert ledger(db) == [good["event_id"]]
