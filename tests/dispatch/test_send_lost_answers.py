"""A send's database work meets lost connections (a PostgreSQL restart, a fail-over, a closed
idle connection) and is run again on a new one. Two cases matter:

- the server ended the connection before it did anything: the work runs again;
- the server committed, then the connection broke before its answer reached us (the commit is
  ambiguous): running the work again must neither apply it twice (a second message row, a
  second send) nor leave the survey claimed and never sent.

PostgreSQL only (SQLite has no connection to lose). The ambiguous commit is played at the
database boundary: the statement is committed by the server on a connection of its own, then
the worker's connection is ended before it hears back. Real channels, respx at the provider.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from dispatch import responses
from models import MessageRecord, SurveyTransition
from models.session import make_engine
from tests.conftest import Database
from tests.dispatch.test_send_promises import (
    OUR_SID,
    REMINDER_AT,
    WaitingRateLimiter,
    form,
    invited,
    listed,
    messages_of,
    page,
    sender_with,
    sendgrid_event,
)
from tests.dispatch.test_sending import (
    NOON,
    SENDGRID_SEND,
    TWILIO_MESSAGES,
    make_sender,
    queued_survey,
    survey,
    twilio_created,
)
from wiring.services import GIVE_UP_AFTER

Matches = Callable[[str, Mapping[str, Any]], bool]


def _outside(db: Database) -> Any:
    return make_engine(db.engine.url.render_as_string(hide_password=False), poolclass=NullPool)


@contextmanager
def answer_lost(db: Database, matches: Matches) -> Iterator[list[str]]:
    """The first statement ``matches`` accepts is committed by the server, and the connection
    that sent it ends before its answer arrives."""
    fired: list[str] = []
    outside = _outside(db)

    def lose(conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if fired or not isinstance(parameters, Mapping) or not matches(statement, parameters):
            return
        fired.append(statement)
        pid = conn.connection.dbapi_connection.info.backend_pid
        with outside.connect() as other:
            other.exec_driver_sql(statement, dict(parameters))
            other.commit()
            other.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})

    event.listen(db.engine, "before_cursor_execute", lose)
    try:
        yield fired
    finally:
        event.remove(db.engine, "before_cursor_execute", lose)
        outside.dispose()


def end_every_connection(db: Database) -> None:
    """What a server restart does to the pool: every connection it holds is gone."""
    outside = _outside(db)
    try:
        with outside.begin() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
    finally:
        outside.dispose()


def _is_claim(statement: str, parameters: Mapping[str, Any]) -> bool:
    return "b_channel" in parameters and "UPDATE surveys" in statement


def _is_record(statement: str, parameters: Mapping[str, Any]) -> bool:
    return "b_provider_message_id" in parameters and "UPDATE surveys" in statement


def transitions(db: Database, survey_id: int) -> list[tuple[str, str]]:
    with db.session() as s:
        return [
            (t.from_state, t.to_state)
            for t in s.scalars(
                select(SurveyTransition)
                .where(SurveyTransition.survey_id == survey_id)
                .order_by(SurveyTransition.id)
            )
        ]


def invitations(db: Database, survey_id: int) -> list[MessageRecord]:
    with db.session() as s:
        return list(
            s.scalars(
                select(MessageRecord).where(
                    MessageRecord.survey_id == survey_id, MessageRecord.kind == "invitation"
                )
            )
        )


def test_a_claim_committed_whose_answer_was_lost_is_sent_once(pg_db, config, respx_mock):
    sid = queued_survey(pg_db, config)
    route = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "sg-1"})

    with answer_lost(pg_db, _is_claim) as fired:
        outcome = make_sender(pg_db).send(sid, config, NOON)

    assert fired  # the claim did commit, unheard
    assert outcome.state == "sent"
    assert route.call_count == 1
    row = survey(pg_db, sid)
    assert (row.state, row.provider_message_id, row.attempts) == ("sent", "sg-1", 1)
    assert len(invitations(pg_db, sid)) == 1
    assert transitions(pg_db, sid)[-4:] == [
        ("queued", "sending"),
        ("sending", "queued"),
        ("queued", "sending"),
        ("sending", "sent"),
    ]


def test_a_record_committed_whose_answer_was_lost_is_recorded_once(pg_db, config, respx_mock):
    sid = queued_survey(pg_db, config)
    route = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "sg-2"})

    with answer_lost(pg_db, _is_record) as fired:
        outcome = make_sender(pg_db).send(sid, config, NOON)

    assert fired
    assert outcome.state == "sent"
    assert route.call_count == 1
    assert survey(pg_db, sid).state == "sent"
    assert [m.provider_message_id for m in invitations(pg_db, sid)] == ["sg-2"]
    assert transitions(pg_db, sid)[-2:] == [("queued", "sending"), ("sending", "sent")]


ANSWERS: dict[str, tuple[httpx.Response, str]] = {
    "accepted": (twilio_created("SM" + "7" * 32), "sent"),
    "refused for good (21211)": (
        httpx.Response(400, json={"code": 21211, "message": "Invalid 'To' Phone Number"}),
        "failed",
    ),
    "refused for now (429)": (
        httpx.Response(429, json={"code": 20429, "message": "Too Many Requests"}),
        "scheduled",
    ),
}


@pytest.mark.parametrize("answer", list(ANSWERS), ids=list(ANSWERS))
def test_a_restart_during_the_provider_call_loses_no_outcome(pg_db, config, respx_mock, answer):
    sid = queued_survey(pg_db, config, consent={"sms": True})
    response: httpx.Response = ANSWERS[answer][0]
    final = ANSWERS[answer][1]

    def provider(_request: httpx.Request) -> httpx.Response:
        end_every_connection(pg_db)  # the database restarts while Twilio works
        return response

    route = respx_mock.post(TWILIO_MESSAGES).mock(side_effect=provider)

    outcome = make_sender(pg_db).send(sid, config, NOON)

    assert route.call_count == 1
    assert outcome.state == final
    row = survey(pg_db, sid)
    assert row.state == final
    assert transitions(pg_db, sid)[-2:] == [("queued", "sending"), ("sending", final)]


# -- reminders ---------------------------------------------------------------------------------


def test_a_restart_while_a_reminder_waits_for_its_slot_still_sends_it(pg_db, config, respx_mock):
    sid, route, sender, limiter = invited(pg_db, config, respx_mock, "sms")
    limiter.during_wait = lambda: end_every_connection(pg_db)

    assert sender.send_reminder(sid, 0, config, REMINDER_AT) == "reminder sent"

    assert route.call_count == 2
    assert survey(pg_db, sid).reminders_sent == 1
    assert [m.kind for m in messages_of(pg_db, sid)] == ["invitation", "reminder"]


def test_a_restart_during_the_reminder_call_records_it_once(pg_db, config, respx_mock):
    sid, route, sender, _limiter = invited(pg_db, config, respx_mock, "sms")

    def provider(_request: httpx.Request) -> httpx.Response:
        end_every_connection(pg_db)
        return twilio_created("SM" + "8" * 32)

    route.mock(side_effect=provider)

    assert sender.send_reminder(sid, 0, config, REMINDER_AT) == "reminder sent"
    assert route.call_count == 2
    assert [(m.kind, m.status) for m in messages_of(pg_db, sid)] == [
        ("invitation", "accepted"),
        ("reminder", "accepted"),
    ]


def test_a_reminder_record_committed_whose_answer_was_lost_is_recorded_once(
    pg_db, config, respx_mock
):
    sid, route, sender, _limiter = invited(pg_db, config, respx_mock, "sms")

    def is_reminder_record(statement: str, parameters: Mapping[str, Any]) -> bool:
        return "INSERT INTO messages" in statement and "reminder" in parameters.values()

    with answer_lost(pg_db, is_reminder_record) as fired:
        assert sender.send_reminder(sid, 0, config, REMINDER_AT) == "reminder sent"

    assert fired
    assert route.call_count == 2
    assert [m.kind for m in messages_of(pg_db, sid)] == ["invitation", "reminder"]


def test_a_restart_while_an_invitation_waits_for_its_slot_still_sends_it(pg_db, config, respx_mock):
    sid = queued_survey(pg_db, config)
    route = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "sg-3"})
    limiter = WaitingRateLimiter()
    limiter.during_wait = lambda: end_every_connection(pg_db)

    assert sender_with(pg_db, limiter).send(sid, config, NOON).state == "sent"

    assert route.call_count == 1
    assert survey(pg_db, sid).attempts == 1
    assert transitions(pg_db, sid)[-2:] == [("queued", "sending"), ("sending", "sent")]


@contextmanager
def database_down(db: Database) -> Iterator[Callable[[], None]]:
    """``go_down()`` ends every connection and refuses new ones until the block ends."""
    name = db.engine.url.database
    admin = make_engine(
        db.engine.url.set(database="postgres").render_as_string(hide_password=False),
        poolclass=NullPool,
    )

    def go_down() -> None:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        end_every_connection_with(admin, name)

    try:
        yield go_down
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        admin.dispose()


def end_every_connection_with(engine: Any, name: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_a_send_accepted_while_the_database_is_down_is_not_resent_and_evidence_settles_it(
    pg_db, config, respx_mock, channel
):
    sid = queued_survey(pg_db, config, consent={channel: True})
    sender = make_sender(pg_db)
    with database_down(pg_db) as go_down:

        def provider(_request: httpx.Request) -> httpx.Response:
            go_down()  # the database goes away while the provider creates the message
            if channel == "sms":
                return twilio_created(OUR_SID)
            return httpx.Response(202, headers={"X-Message-Id": "sgid-1"})

        url = TWILIO_MESSAGES if channel == "sms" else SENDGRID_SEND
        post = respx_mock.post(url).mock(side_effect=provider)
        with pytest.raises(DBAPIError):
            sender.send(sid, config, NOON)

    # The queue delivers the message again: nothing is sent twice.
    assert sender.send(sid, config, NOON + timedelta(minutes=1)).state == "sending"
    assert survey(pg_db, sid).state == "sending"
    if channel == "sms":
        body = form(post.calls.last.request)["Body"][0]
        respx_mock.get(TWILIO_MESSAGES).respond(200, json=page(listed(OUR_SID, body)))
        assert sender.settle(sid, config, NOON + timedelta(minutes=5), GIVE_UP_AFTER) == (
            "sent (found by lookup)"
        )
        assert survey(pg_db, sid).state == "sent"
    else:
        [handled] = responses.ingest_webhooks(
            pg_db.factory,
            config,
            sendgrid_event(sid, "delivered", "ev-1"),
            now=NOON + timedelta(minutes=6),
        )
        assert handled.result == "delivered"
    assert post.call_count == 1
