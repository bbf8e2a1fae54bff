"""dispatch.responses.intake_group: a group of status callbacks stored and, where they only
advance a message, applied in one transaction; one outcome per callback, duplicates without a
second effect, and nothing at all kept when the transaction fails."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text, update

from dispatch.responses.intake_group import take_delivery_event, take_delivery_events
from models import InboundEvent, MessageRecord, utcnow
from tests.conftest import Database
from tests.dispatch.test_responses import seed_survey, survey_of, twilio_status
from tests.dispatch.test_responses_intake import message_status, unhandled


def test_a_group_stores_every_callback_and_applies_those_that_only_advance_a_message(db):
    first, second = seed_survey(db, state="sent"), seed_survey(db, state="sent")
    msg1, msg2 = (str(survey_of(db, sid).provider_message_id) for sid in (first, second))
    group = [
        twilio_status(first, msg1, "queued"),
        twilio_status(first, msg1, "sent"),  # ranks above queued: the message takes it
        twilio_status(second, msg2, "delivered"),  # moves the survey: left for the replay
        twilio_status(second, msg2, "sent"),
        twilio_status(first, msg1, "queued"),  # a copy within the group
        twilio_status(None, "SMunknown", "sent"),  # no message of ours: left for the replay
    ]
    taken = take_delivery_events(db.factory, group, now=utcnow())
    assert [t.status for t in taken] == [
        "applied",
        "applied",
        "stored",
        "applied",
        "duplicate",
        "stored",
    ]
    assert len({t.row_id for t in taken if t.row_id is not None}) == 5
    assert message_status(db, first) == "sent" and message_status(db, second) == "sent"
    assert len(unhandled(db)) == 2
    with db.session() as s:
        tied = dict(s.execute(select(InboundEvent.id, InboundEvent.survey_id)).all())
    assert tied[taken[0].row_id] == first and tied[taken[3].row_id] == second


def test_a_copy_of_an_applied_callback_in_a_later_group_has_no_second_effect(db):
    sid = seed_survey(db, state="sent")
    msg = str(survey_of(db, sid).provider_message_id)
    assert take_delivery_event(db.factory, twilio_status(sid, msg, "queued")).status == "applied"
    with db.session() as s, s.begin():  # the message moved on meanwhile, say by the sender
        s.execute(update(MessageRecord).values(status="accepted"))
    other = seed_survey(db, state="sent")
    other_msg = str(survey_of(db, other).provider_message_id)
    taken = take_delivery_events(
        db.factory,
        [twilio_status(sid, msg, "queued"), twilio_status(other, other_msg, "sent")],
    )
    # The copy's message update was undone with the whole first try; the rest went again.
    assert [t.status for t in taken] == ["duplicate", "applied"]
    assert message_status(db, sid) == "accepted" and message_status(db, other) == "sent"
    with db.session() as s:
        assert len(list(s.scalars(select(InboundEvent.id)))) == 2


def test_a_failed_group_keeps_nothing(db: Database):
    sid = seed_survey(db, state="sent")
    msg = str(survey_of(db, sid).provider_message_id)
    group = [
        twilio_status(sid, msg, "sent"),
        twilio_status(sid, msg, "delivered"),
        twilio_status(sid, msg, "failed"),
    ]
    refused = group[2].external_id
    with db.engine.begin() as conn:  # the database refuses one row of the group
        if db.engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF NEW.external_id = '{refused}' THEN RAISE EXCEPTION 'refused'; END IF; "
                    "RETURN NEW; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_one BEFORE INSERT ON inbound_events "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_one()"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_one BEFORE INSERT ON inbound_events "
                    f"WHEN NEW.external_id = '{refused}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
    with pytest.raises(Exception, match="refused"):
        take_delivery_events(db.factory, group)
    with db.session() as s:
        assert list(s.scalars(select(InboundEvent.id))) == []
    assert message_status(db, sid) == "accepted"  # its update went with the refused rows
