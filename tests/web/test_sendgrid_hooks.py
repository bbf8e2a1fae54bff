"""The SendGrid Event Webhook over HTTP, signed with a generated P-256 key."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from config import load_config
from dispatch import responses
from models import Answer, ConsentRecord, InboundEvent, SurveyTransition, current_consent, utcnow
from tests.conftest import Database
from tests.dispatch.test_responses import EMAIL, seed_survey, survey_of
from web.app import create_app

PATH = "/webhooks/sendgrid/events"


@pytest.fixture(scope="module")
def private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_key_of(private_key: ec.EllipticCurvePrivateKey) -> str:
    """As SendGrid's settings page shows it: base64 of the DER SubjectPublicKeyInfo."""
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


@pytest.fixture
def client(db: Database, runtime_for, private_key):
    runtime = runtime_for(db, SENDGRID_WEBHOOK_PUBLIC_KEY=public_key_of(private_key))
    return TestClient(create_app(runtime))


def sign(private_key, body: bytes, timestamp: str) -> str:
    der = private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(der).decode("ascii")


def send(
    client, private_key, events: list[dict[str, Any]], *, age: int = 0, body: bytes | None = None
):
    raw = body if body is not None else json.dumps(events).encode() + b"\r\n"
    timestamp = str(int(time.time()) - age)
    return client.post(
        PATH,
        content=raw,
        headers={
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": sign(private_key, raw, timestamp),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        },
    )


def event(survey_id: int, name: str, event_id: str, message_id: str | None, **extra: Any):
    payload: dict[str, Any] = {
        "email": EMAIL,
        "event": name,
        "sg_event_id": event_id,
        "timestamp": int(time.time()),
        "survey_id": str(survey_id),
        **extra,
    }
    if message_id:
        payload["sg_message_id"] = f"{message_id}.recvd-5f7d9-1"
    return payload


def replay(db: Database) -> responses.ReplayReport:
    """The scheduler's next replay pass, which applies what the route left stored."""
    return responses.replay_unhandled_webhooks(db.factory, load_config(None), now=utcnow())


def refusals() -> float:
    value = REGISTRY.get_sample_value(
        "nps_webhook_verification_failures_total", {"source": "sendgrid"}
    )
    return value or 0.0


def written(db: Database) -> tuple[int, ...]:
    with db.session() as s:
        return tuple(
            s.scalar(select(func.count()).select_from(m)) or 0
            for m in (InboundEvent, Answer, SurveyTransition, ConsentRecord)
        )


def test_forged_missing_altered_and_stale_signatures_are_refused(client, db, private_key):
    sid = seed_survey(db, channel="email", state="sent")
    events = [event(sid, "unsubscribe", "e-1", None)]
    body = json.dumps(events).encode()
    before = written(db)
    refused_before = refusals()
    now = str(int(time.time()))
    other = ec.generate_private_key(ec.SECP256R1())
    attempts = [
        {},  # missing headers
        {"X-Twilio-Email-Event-Webhook-Timestamp": now},
        {  # forged: another key
            "X-Twilio-Email-Event-Webhook-Signature": sign(other, body, now),
            "X-Twilio-Email-Event-Webhook-Timestamp": now,
        },
        {  # not base64 at all
            "X-Twilio-Email-Event-Webhook-Signature": "%%%",
            "X-Twilio-Email-Event-Webhook-Timestamp": now,
        },
        {  # signed over another timestamp
            "X-Twilio-Email-Event-Webhook-Signature": sign(private_key, body, now),
            "X-Twilio-Email-Event-Webhook-Timestamp": str(int(now) - 1),
        },
    ]
    for headers in attempts:
        response = client.post(
            PATH, content=body, headers={"Content-Type": "application/json", **headers}
        )
        assert response.status_code == 403
    # Signed, then altered on the way.
    signature = sign(private_key, body, now)
    altered = body.replace(b"unsubscribe", b"delivered")
    response = client.post(
        PATH,
        content=altered,
        headers={
            "X-Twilio-Email-Event-Webhook-Signature": signature,
            "X-Twilio-Email-Event-Webhook-Timestamp": now,
        },
    )
    assert response.status_code == 403
    # Genuine but stale (11 minutes old): a replayed capture.
    assert send(client, private_key, events, age=11 * 60).status_code == 403
    assert written(db) == before
    assert refusals() - refused_before == len(attempts) + 2
    assert survey_of(db, sid).state == "sent"


def test_no_public_key_configured_fails_closed(db, runtime_for, private_key):
    client = TestClient(create_app(runtime_for(db)))
    assert send(client, private_key, []).status_code == 403


def test_a_fresh_signature_within_ten_minutes_passes(client, db, private_key):
    assert send(client, private_key, [], age=9 * 60).status_code == 200


def test_batch_with_duplicates_and_reordering(client, db, private_key):
    sid = seed_survey(db, channel="email", state="sent")
    msg = survey_of(db, sid).provider_message_id
    delivered = event(sid, "delivered", "e-del", msg)
    processed = event(sid, "processed", "e-proc", msg)
    opened = event(sid, "open", "e-open", msg)
    response = send(client, private_key, [delivered, opened, delivered, processed])
    assert response.status_code == 200
    assert response.json() == {
        "received": 4,
        "applied": 0,
        "stored": 3,
        "duplicates": 1,
        "failed": 0,
    }
    # SendGrid retries the whole batch: every event is a duplicate now.
    again = send(client, private_key, [processed, delivered, opened])
    assert again.json()["duplicates"] == 3
    assert survey_of(db, sid).state == "sent"
    assert replay(db).applied == 3
    survey = survey_of(db, sid)
    assert survey.state == "delivered" and survey.score is None
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(InboundEvent)) == 3


def test_bounce_and_dropped_are_undeliverable(client, db, private_key):
    bounced = seed_survey(db, channel="email", state="delivered")
    dropped = seed_survey(db, channel="email", state="sent")
    send(
        client,
        private_key,
        [
            # An asynchronous bounce carries no sg_message_id; our survey_id finds it.
            event(
                bounced,
                "bounce",
                "e-b",
                None,
                type="bounce",
                status="5.1.1",
                reason="550 5.1.1 user unknown",
            ),
            event(dropped, "dropped", "e-d", survey_of(db, dropped).provider_message_id),
        ],
    )
    replay(db)
    assert survey_of(db, bounced).state == "undeliverable"
    assert "5.1.1" in survey_of(db, bounced).final_reason
    assert survey_of(db, dropped).state == "undeliverable"


@pytest.mark.parametrize("name", ["unsubscribe", "group_unsubscribe", "spamreport"])
def test_opt_outs_revoke_email_consent(client, db, private_key, name):
    sid = seed_survey(db, channel="email", state="delivered")
    response = send(client, private_key, [event(sid, name, f"e-{name}", None, asm_group_id=7)])
    assert response.status_code == 200
    assert survey_of(db, sid).state == "opted_out"
    with db.session() as s:
        assert not current_consent(s, survey_of(db, sid).customer_id, "email")


def test_click_is_engagement_never_an_answer(client, db, private_key):
    sid = seed_survey(db, channel="email", state="delivered")
    send(
        client,
        private_key,
        [event(sid, "click", "e-click", None, url="https://nps.example.test/s/abc?score=10")],
    )
    replay(db)
    assert survey_of(db, sid).score is None
    with db.session() as s:
        row = s.scalar(select(InboundEvent))
        assert row.result == "engagement: clicked" and row.payload["url"].endswith("score=10")


def test_signed_but_not_json_is_400_and_writes_nothing(client, db, private_key):
    assert send(client, private_key, [], body=b"{not json").status_code == 400
    assert written(db) == (0, 0, 0, 0)


def test_opt_outs_are_applied_before_the_answer(client, db, private_key):
    """An unsubscribe must hold before any later send: it is applied in the request, while the
    delivery news beside it waits for the replay."""
    sid = seed_survey(db, channel="email", state="sent")
    msg = survey_of(db, sid).provider_message_id
    batch = [event(sid, "delivered", "e-d", msg), event(sid, "unsubscribe", "e-u", None)]
    response = send(client, private_key, batch)
    assert response.json() == {
        "received": 2,
        "applied": 1,
        "stored": 1,
        "duplicates": 0,
        "failed": 0,
    }
    assert survey_of(db, sid).state == "opted_out"
    with db.session() as s:
        assert not current_consent(s, survey_of(db, sid).customer_id, "email")
    assert replay(db).applied == 1  # the delivery news, which moves an ended survey no more
    assert survey_of(db, sid).state == "opted_out"


def test_a_failed_event_is_kept_and_the_retry_applies_it(client, db, private_key, monkeypatch):
    sid = seed_survey(db, channel="email", state="sent")
    msg = survey_of(db, sid).provider_message_id
    batch = [event(sid, "processed", "e-p", msg), event(sid, "unsubscribe", "e-u", None)]
    real = responses.apply_delivery_event

    def flaky(session, ev, config, now):
        if ev.event_id == "e-u":
            raise RuntimeError("deadlock detected")
        return real(session, ev, config, now)

    monkeypatch.setattr(responses, "apply_delivery_event", flaky)
    first = send(client, private_key, batch)
    assert first.status_code == 500  # SendGrid retries non-2xx for 24 hours
    body = first.json()
    assert body.pop("error")["code"] == "internal_error"
    assert body == {"received": 2, "applied": 0, "stored": 1, "duplicates": 0, "failed": 1}
    with db.session() as s:
        failed = s.scalars(select(InboundEvent.external_id).where(InboundEvent.attempts > 0)).all()
    assert failed == ["e-u"]
    monkeypatch.setattr(responses, "apply_delivery_event", real)
    retry = send(client, private_key, batch)
    assert retry.status_code == 200
    assert retry.json() == {"received": 2, "applied": 0, "stored": 0, "duplicates": 2, "failed": 0}
    assert survey_of(db, sid).state == "opted_out"
