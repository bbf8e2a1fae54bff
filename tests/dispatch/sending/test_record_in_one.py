"""On PostgreSQL the record of an accepted send is one statement on its own: the erasure check
under a share lock of the customer's row, ``sending -> sent``, its transition and the
invitation's message row. An accepted send then takes three statements (pick-up, claim,
record), and an erasure under way when the record runs is waited for and obeyed.

Real PostgreSQL, the real SendGrid channel, respx at the provider boundary.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, text
from sqlalchemy.pool import NullPool

from models import Customer, MessageRecord, Survey
from models.session import make_engine
from tests.conftest import Database
from tests.dispatch.test_sending import NOON, SENDGRID_SEND, make_sender, queued_survey, survey


@contextmanager
def statements_of(db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def before(*args: Any) -> None:
        seen.append(args[2])

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


def test_an_accepted_send_takes_three_statements_the_record_one(pg_db, config, respx_mock):
    survey_id = queued_survey(pg_db, config)
    respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "sg-1"})

    with statements_of(pg_db) as seen:
        assert make_sender(pg_db).send(survey_id, config, NOON).state == "sent"

    assert len(seen) == 3
    record = seen[-1]
    assert "FOR SHARE" in record and "UPDATE surveys" in record and "INSERT INTO messages" in record
    row = survey(pg_db, survey_id)
    assert (row.state, row.provider_message_id, row.sent_at) == ("sent", "sg-1", NOON)
    assert row.next_reminder_at == NOON + config.survey.reminder.after
    with pg_db.session() as s:
        kept = s.execute(
            select(MessageRecord.provider_message_id, MessageRecord.kind).where(
                MessageRecord.survey_id == survey_id
            )
        ).all()
    assert [tuple(k) for k in kept] == [("sg-1", "invitation")]


def _waiting_for_a_lock(outside: Any, pid: int) -> bool:
    with outside.connect() as conn:
        return bool(
            conn.execute(
                text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            ).scalar()
        )


@pytest.mark.parametrize("survey_too", [False, True], ids=["customer", "customer-and-survey"])
def test_an_erasure_under_way_is_waited_for_and_obeyed(pg_db, config, respx_mock, survey_too):
    """The erasure holds the customer's row (it took it FOR UPDATE and has not committed yet)
    when the provider answers, and perhaps has already emptied the survey's row too (as
    ``ingest.erasure.apply_erasure`` does): the record waits for it, then keeps nothing
    personal."""
    survey_id = queued_survey(pg_db, config)
    with pg_db.session() as s:
        customer_id = s.scalar(select(Survey.customer_id).where(Survey.id == survey_id))
    outside = make_engine(
        pg_db.engine.url.render_as_string(hide_password=False), poolclass=NullPool
    )
    erasure = outside.connect()
    worker_pids: list[int] = []

    def accepted_while_erasing(_request: httpx.Request) -> httpx.Response:
        erasure.execute(select(Customer.id).where(Customer.id == customer_id).with_for_update())
        if survey_too:
            erasure.execute(
                text(
                    "UPDATE surveys SET provider_message_id = NULL, next_reminder_at = NULL,"
                    " timezone = NULL WHERE customer_id = :id"
                ),
                {"id": customer_id},
            )
        erasure.execute(
            text("UPDATE customers SET erased_at = :now, email = NULL WHERE id = :id"),
            {"now": NOON, "id": customer_id},
        )
        return httpx.Response(202, headers={"X-Message-Id": "sg-2"})

    def note_pid(conn: Any, *_: Any) -> None:
        worker_pids.append(conn.connection.dbapi_connection.info.backend_pid)

    respx_mock.post(SENDGRID_SEND).mock(side_effect=accepted_while_erasing)
    outcome: list[str] = []
    sender = make_sender(pg_db)
    event.listen(pg_db.engine, "before_cursor_execute", note_pid)
    try:
        send = threading.Thread(
            target=lambda: outcome.append(sender.send(survey_id, config, NOON).state)
        )
        send.start()
        # The record blocks on the customer's row until the erasure commits.
        while not (worker_pids and _waiting_for_a_lock(outside, worker_pids[-1])):
            assert send.is_alive(), "the record did not wait for the erasure"
            threading.Event().wait(0.01)
        assert outcome == []
        erasure.commit()
        send.join(timeout=30)
    finally:
        event.remove(pg_db.engine, "before_cursor_execute", note_pid)
        erasure.close()
        outside.dispose()

    assert outcome == ["sent"]
    row = survey(pg_db, survey_id)
    assert (row.state, row.sent_at) == ("sent", NOON)
    assert row.closes_at == NOON + config.survey.response_window
    assert row.provider_message_id is None and row.next_reminder_at is None
    with pg_db.session() as s:
        kept = s.execute(
            select(MessageRecord.provider_message_id, MessageRecord.body).where(
                MessageRecord.survey_id == survey_id
            )
        ).all()
    assert [tuple(k) for k in kept] == [(None, None)]
