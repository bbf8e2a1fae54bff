"""A status callback taken while the customer is being erased, on PostgreSQL: the fast path that
only advances a message's delivery state must not tie the callback's raw payload (it holds the
phone number) to the survey once the erasure has committed."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import select, text, update

from dispatch import responses
from dispatch.responses.intake import Taken
from models import Customer, InboundEvent, MessageRecord, Survey
from tests.conftest import NOW, Database
from tests.dispatch.test_responses import seed_survey, survey_of, twilio_status


def _wait_for_a_lock_wait(db: Database) -> None:
    """Until another session of this database waits for a row lock (bounded)."""
    for _ in range(500):
        with db.engine.connect() as conn:
            waiting = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return
        time.sleep(0.01)
    raise AssertionError("the callback never waited for the erasure's lock")


def test_a_callback_racing_an_erasure_keeps_nothing_tied_to_the_survey(pg_db: Database):
    db = pg_db
    sid = seed_survey(db, state="sent", now=NOW)
    msg = survey_of(db, sid).provider_message_id
    assert msg is not None
    customer_id = survey_of(db, sid).customer_id
    taken: list[Taken] = []

    with db.engine.connect() as erasure:
        # What the erasure does to a sent survey's rows, in its order: the message row first
        # (held locked until it commits), then the raw webhooks tied to the survey.
        erasure.execute(
            update(MessageRecord)
            .where(MessageRecord.survey_id == sid)
            .values(body=None, provider_message_id=None)
        )
        callback = threading.Thread(
            target=lambda: taken.append(
                responses.take_delivery_event(
                    db.factory, twilio_status(sid, msg, "sent"), now=NOW + timedelta(seconds=1)
                )
            )
        )
        callback.start()
        try:
            _wait_for_a_lock_wait(db)
            erasure.execute(update(Survey).where(Survey.id == sid).values(provider_message_id=None))
            erasure.execute(
                update(InboundEvent)
                .where(InboundEvent.survey_id == sid)
                .values(payload=None, subject_key=None, survey_id=None)
            )
            erasure.execute(
                update(Customer)
                .where(Customer.id == customer_id)
                .values(phone=None, email=None, first_name=None, erased_at=NOW)
            )
            erasure.commit()
        finally:
            callback.join(timeout=30)
    assert not callback.is_alive()
    # Not applied against the erased message: stored for the full rules, which know erasure.
    assert [t.status for t in taken] == ["stored"]
    with db.session() as s:
        tied = s.execute(
            select(InboundEvent.id).where(
                InboundEvent.survey_id == sid, InboundEvent.payload.is_not(None)
            )
        ).all()
    assert tied == []
