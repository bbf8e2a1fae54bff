"""What one provider webhook costs the database: a fixed number of statements and one
transaction per request, whatever the batch size (the SQL a route runs, counted at the cursor;
SQLite's own ``BEGIN IMMEDIATE`` is left out, it is how that backend opens any transaction)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from tests.conftest import Database
from tests.dispatch.test_responses import seed_survey, survey_of
from tests.web.test_sendgrid_hooks import event as sendgrid_event
from tests.web.test_sendgrid_hooks import public_key_of, sign
from tests.web.test_twilio_hooks import TOKEN, post, sms_params, status_params
from web.app import create_app


@dataclass
class Counted:
    statements: list[str] = field(default_factory=list)
    full: list[str] = field(default_factory=list)
    commits: int = 0


@contextmanager
def counting(db: Database) -> Iterator[Counted]:
    counted = Counted()

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith("BEGIN"):
            counted.statements.append(statement.split(None, 1)[0])
            counted.full.append(" ".join(statement.split())[:300])

    def on_commit(_conn: Any) -> None:
        counted.commits += 1

    event.listen(db.engine, "before_cursor_execute", on_execute)
    event.listen(db.engine, "commit", on_commit)
    try:
        yield counted
    finally:
        event.remove(db.engine, "before_cursor_execute", on_execute)
        event.remove(db.engine, "commit", on_commit)


@pytest.fixture
def client(db: Database, runtime_for, private_key) -> TestClient:
    runtime = runtime_for(
        db, TWILIO_AUTH_TOKEN=TOKEN, SENDGRID_WEBHOOK_PUBLIC_KEY=public_key_of(private_key)
    )
    return TestClient(create_app(runtime))


@pytest.fixture(scope="module")
def private_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def test_a_status_callback_that_only_advances_the_message_is_two_statements(client, db):
    sid = seed_survey(db, state="sent")
    msg = survey_of(db, sid).provider_message_id
    with counting(db) as counted:
        response = post(
            client, f"/webhooks/twilio/status?survey_id={sid}", status_params(msg, "sent")
        )
    assert response.status_code == 204
    assert counted.statements == ["UPDATE", "INSERT"] and counted.commits == 1


def test_a_status_callback_that_moves_the_survey_is_one_statement(client, db):
    sid = seed_survey(db, state="sent")
    msg = survey_of(db, sid).provider_message_id
    path = f"/webhooks/twilio/status?survey_id={sid}"
    with counting(db) as counted:
        assert post(client, path, status_params(msg, "delivered")).status_code == 204
    assert counted.statements == ["INSERT"] and counted.commits == 1
    with counting(db) as counted:  # its duplicate: refused by the INSERT, then an UPDATE that
        # brings the stored row back to the replay only if its application had failed
        assert post(client, path, status_params(msg, "delivered")).status_code == 204
    assert counted.statements == ["INSERT", "UPDATE"]


def test_an_inbound_reply_is_one_transaction_of_a_fixed_size(client, db):
    seed_survey(db, state="sent")
    with counting(db) as counted:
        response = post(client, "/webhooks/twilio/inbound", sms_params("9"))
    assert response.status_code == 200 and "<Message>" in response.text
    assert counted.commits == 1
    # Stored; the sender's customers; their open SMS survey, locked; the score (the survey's
    # move: read, update, transition; the survey read back; the answer; any detractor alert
    # closed); the follow-up question kept as a message; the row marked applied.
    assert len(counted.statements) == 11, "\n".join(counted.full)


@pytest.mark.parametrize("size", [3, 60])
def test_a_sendgrid_batch_is_one_statement_whatever_its_size(client, db, private_key, size):
    sid = seed_survey(db, channel="email", state="sent")
    msg = survey_of(db, sid).provider_message_id
    names = ["processed", "delivered", "open"]
    events = [sendgrid_event(sid, names[i % 3], f"e-{size}-{i}", msg) for i in range(size)]
    body = json.dumps(events).encode()
    timestamp = str(int(time.time()))
    with counting(db) as counted:
        response = client.post(
            "/webhooks/sendgrid/events",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Twilio-Email-Event-Webhook-Signature": sign(private_key, body, timestamp),
                "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
            },
        )
    assert response.status_code == 200 and response.json()["stored"] == size
    assert counted.statements == ["INSERT"] and counted.commits == 1
