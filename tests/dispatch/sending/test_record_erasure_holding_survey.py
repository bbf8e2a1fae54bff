"""An erasure under way that has already updated the survey's row too (as
``ingest.erasure.apply_erasure`` does) when the accepted send is recorded in one WITH: the
record waits for it and keeps nothing personal."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from sqlalchemy import event, select, text
from sqlalchemy.pool import NullPool

from models import MessageRecord, Survey
from models.session import make_engine
from tests.dispatch.sending.test_record_in_one import _waiting_for_a_lock
from tests.dispatch.test_sending import NOON, SENDGRID_SEND, make_sender, queued_survey, survey


def test_an_erasure_holding_customer_and_survey_rows_is_obeyed(pg_db, config, respx_mock):
    survey_id = queued_survey(pg_db, config)
    with pg_db.session() as s:
        customer_id = s.scalar(select(Survey.customer_id).where(Survey.id == survey_id))
    outside = make_engine(
        pg_db.engine.url.render_as_string(hide_password=False), poolclass=NullPool
    )
    erasure = outside.connect()
    pids: list[int] = []

    def accepted_while_erasing(_request: httpx.Request) -> httpx.Response:
        erasure.execute(
            text("SELECT id FROM customers WHERE id = :id FOR UPDATE"), {"id": customer_id}
        )
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
        return httpx.Response(202, headers={"X-Message-Id": "sg-3"})

    def note_pid(conn: Any, *_: Any) -> None:
        pids.append(conn.connection.dbapi_connection.info.backend_pid)

    respx_mock.post(SENDGRID_SEND).mock(side_effect=accepted_while_erasing)
    outcome: list[str] = []
    sender = make_sender(pg_db)
    event.listen(pg_db.engine, "before_cursor_execute", note_pid)
    try:
        send = threading.Thread(
            target=lambda: outcome.append(sender.send(survey_id, config, NOON).state)
        )
        send.start()
        while not (pids and _waiting_for_a_lock(outside, pids[-1])):
            assert send.is_alive()
            threading.Event().wait(0.01)
        erasure.commit()
        send.join(timeout=30)
    finally:
        event.remove(pg_db.engine, "before_cursor_execute", note_pid)
        erasure.close()
        outside.dispose()
    assert outcome == ["sent"]
    row = survey(pg_db, survey_id)
    assert row.provider_message_id is None and row.next_reminder_at is None
    with pg_db.session() as s:
        kept = s.execute(
            select(MessageRecord.provider_message_id, MessageRecord.body).where(
                MessageRecord.survey_id == survey_id
            )
        ).all()
    assert [tuple(k) for k in kept] == [(None, None)]
