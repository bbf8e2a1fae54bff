"""The cost of one send is fixed: the same few statements for the first send as for the fiftieth
(pick-up, claim with its transition, and the record), whatever else the database holds; a pooled
connection the server closed costs no send; every outcome is counted by channel.

Real databases, the real SendGrid and Twilio channels, respx at the provider boundary.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from prometheus_client import REGISTRY
from sqlalchemy import event, select, text
from sqlalchemy.pool import NullPool

from dispatch.scheduler import Scheduler
from ingest.service import ingest_event
from models import Customer, MessageRecord, Survey, SurveyTransition
from models.customers import record_consent
from models.session import make_engine
from tests.conftest import Database
from tests.dispatch.test_sending import (
    NOON,
    SENDGRID_SEND,
    TWILIO_MESSAGES,
    make_sender,
    twilio_created,
)
from tests.factories import order_event, purchase

#: Statements of one accepted send: the pick-up's read (1; its lease is fresh), the claim with
#: its transition row (1 on PostgreSQL, a data-modifying WITH; 2 on SQLite), and the record:
#: the erasure check, the move to sent with its transition row and the message row (1 on
#: PostgreSQL, one WITH run on its own; 4 on SQLite). SQLite adds the BEGIN IMMEDIATE of its
#: three transactions.
STATEMENTS_PER_SEND = {"postgresql": 3, "sqlite": 10}


def queued_surveys(db: Database, config: Any, count: int, *, consent: Any = None) -> list[int]:
    """``count`` purchases by as many customers, delivered, and one scheduler pass."""
    for n in range(count):
        ingest_event(
            db.factory,
            purchase(
                f"A-{n}",
                customer_id=f"c-{n}",
                at="2026-11-18T10:00:00Z",
                consent=consent or {"email": True},
            ),
            config,
            NOON,
        )
        ingest_event(
            db.factory, order_event("delivered", f"A-{n}", at="2026-11-19T10:00:00Z"), config, NOON
        )
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, NOON)
    assert len(enqueued) == count
    return enqueued


@contextmanager
def counted(db: Database) -> Iterator[list[str]]:
    statements: list[str] = []

    def before(*args: Any) -> None:
        statements.append(args[2])

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


def sends_counted(channel: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value("nps_sends_total", {"channel": channel, "outcome": outcome})
    return value or 0.0


def test_every_send_takes_the_same_few_statements(db, config, respx_mock):
    surveys = queued_surveys(db, config, 50)
    respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "msg-1"})
    sender = make_sender(db)
    per_send = []
    for survey_id in surveys:
        with counted(db) as statements:
            assert sender.send(survey_id, config, NOON).state == "sent"
        per_send.append(len(statements))
    assert per_send == [STATEMENTS_PER_SEND[db.engine.dialect.name]] * 50
    with db.session() as s:
        assert set(s.scalars(select(Survey.state))) == {"sent"}
        assert s.scalar(select(MessageRecord.id).order_by(MessageRecord.id.desc())) == 50
        # Each send leaves its two transitions, as every move does.
        moves = s.execute(
            select(SurveyTransition.from_state, SurveyTransition.to_state).where(
                SurveyTransition.survey_id == surveys[-1]
            )
        ).all()
        assert [tuple(m) for m in moves][-2:] == [("queued", "sending"), ("sending", "sent")]


def test_a_duplicate_message_reads_one_row_and_sends_nothing(db, config, respx_mock):
    (survey_id,) = queued_surveys(db, config, 1)
    route = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "msg-1"})
    sender = make_sender(db)
    sender.send(survey_id, config, NOON)
    with counted(db) as statements:
        assert sender.send(survey_id, config, NOON).state == "sent"
    assert route.call_count == 1
    # The pick-up reads the row, finds it sent, and stops there.
    assert len([s for s in statements if not s.startswith("BEGIN")]) == 1


def test_outcomes_and_provider_calls_are_counted_by_channel(db, config, respx_mock):
    first, second, third = queued_surveys(db, config, 3, consent={"sms": True})
    respx_mock.post(TWILIO_MESSAGES).mock(
        side_effect=[twilio_created(), httpx.Response(429), httpx.Response(503)]
    )
    before = {o: sends_counted("sms", o) for o in ("sent", "transient", "unknown", "withdrawn")}
    latency = REGISTRY.get_sample_value("nps_send_latency_seconds_count", {"channel": "sms"}) or 0
    sender = make_sender(db)
    assert sender.send(first, config, NOON).state == "sent"
    assert sender.send(second, config, NOON).state == "scheduled"
    assert sender.send(third, config, NOON).state == "sending"
    # A revocation committed before the claim: stopped at send time, no provider call.
    (fourth,) = queued_surveys_after(db, config)
    assert sender.send(fourth, config, NOON).state == "suppressed"
    after = {o: sends_counted("sms", o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {
        "sent": 1,
        "transient": 1,
        "unknown": 1,
        "withdrawn": 1,
    }
    calls = REGISTRY.get_sample_value("nps_send_latency_seconds_count", {"channel": "sms"})
    assert calls == latency + 3


def queued_surveys_after(db: Database, config: Any) -> list[int]:
    """One more queued SMS survey whose customer's SMS consent is revoked once it is queued
    (the record alone, as a revocation committed while the worker waited leaves it)."""
    ingest_event(
        db.factory,
        purchase("B-1", customer_id="c-b", at="2026-11-18T10:00:00Z", consent={"sms": True}),
        config,
        NOON,
    )
    ingest_event(
        db.factory, order_event("delivered", "B-1", at="2026-11-19T10:00:00Z"), config, NOON
    )
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, NOON)
    with db.session() as s, s.begin():
        customer = s.scalars(select(Customer).where(Customer.external_id == "c-b")).one()
        record_consent(
            s,
            customer,
            {"sms": False},
            source="test",
            text_version=None,
            captured_at=NOON,
            evidence_kind="event",
            evidence_ref=None,
            recorded_at=NOON,
        )
    return enqueued


def test_a_connection_the_server_closed_costs_no_send(pg_db, config, respx_mock):
    first, second = queued_surveys(pg_db, config, 2)
    route = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "msg-1"})
    sender = make_sender(pg_db)
    assert sender.send(first, config, NOON).state == "sent"
    # The server ends every pooled connection (a restart, an idle limit, a fail-over).
    outside = make_engine(
        pg_db.engine.url.render_as_string(hide_password=False), poolclass=NullPool
    )
    try:
        with outside.begin() as conn:
            ended = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
    finally:
        outside.dispose()
    assert ended >= 1
    assert sender.send(second, config, NOON).state == "sent"
    assert route.call_count == 2


def test_the_pool_holds_a_worker_process_threads():
    """A worker process runs 8 threads by default: each keeps its connection between messages
    instead of opening one per message, and none is pinged before every transaction (a
    connection found dead is replaced instead, as above)."""
    engine = make_engine("postgresql://nps:nps@127.0.0.1:1/none")
    try:
        assert engine.pool.size() >= 8 + 4
        assert engine.pool._pre_ping is False
        assert engine.pool._recycle > 0
    finally:
        engine.dispose()
