"""Status callbacks and email events against what else happens to their rows.

A callback taken while the customer is being erased, on PostgreSQL: the fast path that only
advances a message's delivery state must not tie the callback's raw payload (it holds the phone
number) to the survey once the erasure has committed. A provider resending an event whose stored
row failed to apply (even given up) brings that row back to the next replay."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import select, text, update

from dispatch import responses
from dispatch.responses.intake import Taken
from dispatch.responses.store import REPLAY_MAX_ATTEMPTS
from models import Customer, InboundEvent, MessageRecord, Survey
from tests.conftest import NOW, Database
from tests.dispatch.test_responses import seed_survey, sendgrid_event, survey_of, twilio_status


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


def _give_up(db: Database, external_id: str) -> None:
    """The row's application failed the last allowed time: no replay takes it any more."""
    with db.session() as s, s.begin():
        s.execute(
            update(InboundEvent)
            .where(InboundEvent.external_id == external_id)
            .values(
                attempts=REPLAY_MAX_ATTEMPTS,
                retry_at=NOW + timedelta(hours=6),
                error="RuntimeError: deadlock detected",
            )
        )


def test_a_resent_status_callback_brings_back_a_row_given_up(db: Database, config):
    sid = seed_survey(db, state="sent", now=NOW)
    msg = survey_of(db, sid).provider_message_id
    assert msg is not None
    raw = twilio_status(sid, msg, "delivered")
    assert responses.take_delivery_event(db.factory, raw, now=NOW).status == "stored"
    _give_up(db, raw.external_id)
    later = NOW + timedelta(minutes=5)
    assert responses.replay_unhandled_webhooks(db.factory, config, now=later).applied == 0
    # Twilio sends the callback again: a duplicate, answered at once, and the stored row is
    # applied by the next pass.
    assert responses.take_delivery_event(db.factory, raw, now=later).status == "duplicate"
    assert responses.replay_unhandled_webhooks(db.factory, config, now=later).applied == 1
    assert survey_of(db, sid).state == "delivered"
    with db.session() as s:
        row = s.scalars(select(InboundEvent).where(InboundEvent.external_id == raw.external_id))
        [stored] = row.all()
    assert stored.handled_at is not None and stored.error is None


def test_a_resent_sendgrid_batch_brings_back_its_rows_given_up(db: Database, config):
    sid = seed_survey(db, channel="email", state="sent", now=NOW)
    msg = survey_of(db, sid).provider_message_id
    raw = sendgrid_event(sid, "delivered", "e-late", msg)
    [first] = responses.take_delivery_batch(db.factory, config, [raw], now=NOW)
    assert first.status == "stored"
    _give_up(db, raw.external_id)
    later = NOW + timedelta(minutes=5)
    [again] = responses.take_delivery_batch(db.factory, config, [raw], now=later)
    assert again.status == "duplicate"
    assert responses.replay_unhandled_webhooks(db.factory, config, now=later).applied == 1
    assert survey_of(db, sid).state == "delivered"


def test_a_duplicate_of_a_row_not_failed_leaves_it_as_it_was(db: Database, config):
    """A copy of a row still waiting for its first replay, or applied already, changes
    nothing: no attempt is taken back, no back-off cut short."""
    sid = seed_survey(db, state="sent", now=NOW)
    msg = survey_of(db, sid).provider_message_id
    assert msg is not None
    raw = twilio_status(sid, msg, "delivered")
    responses.take_delivery_event(db.factory, raw, now=NOW)
    assert responses.take_delivery_event(db.factory, raw, now=NOW).status == "duplicate"
    with db.session() as s:
        [(attempts, retry_at)] = s.execute(
            select(InboundEvent.attempts, InboundEvent.retry_at).where(
                InboundEvent.external_id == raw.external_id
            )
        ).all()
    assert (attempts, retry_at) == (0, NOW)
