"""dispatch.responses.intake and the replay that applies what it leaves stored, on real
databases: nothing stored is lost, a duplicate has one effect, late statuses never go back."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event, select, update

from dispatch import responses
from models import InboundEvent, MessageRecord, SurveyTransition, utcnow
from tests.conftest import Database
from tests.dispatch.test_responses import seed_survey, survey_of, twilio_status


def message_status(db: Database, survey_id: int) -> str:
    with db.session() as s:
        return str(
            s.scalar(select(MessageRecord.status).where(MessageRecord.survey_id == survey_id))
        )


def unhandled(db: Database) -> list[tuple[str, int]]:
    with db.session() as s:
        rows = s.execute(
            select(InboundEvent.external_id, InboundEvent.attempts)
            .where(InboundEvent.handled_at.is_(None))
            .order_by(InboundEvent.id)
        )
        return [(r.external_id, r.attempts) for r in rows]


def test_a_status_that_moves_the_survey_is_stored_and_applied_at_the_next_pass(db, config):
    sid = seed_survey(db, state="sent")
    msg = survey_of(db, sid).provider_message_id
    now = utcnow()
    taken = responses.take_delivery_event(db.factory, twilio_status(sid, msg, "delivered"), now=now)
    assert taken.status == "stored" and survey_of(db, sid).state == "sent"
    # Left for later: due at once, not after the minute kept for a request still applying.
    report = responses.replay_unhandled_webhooks(db.factory, config, now=now)
    assert report.applied == 1 and survey_of(db, sid).state == "delivered"
    again = responses.take_delivery_event(db.factory, twilio_status(sid, msg, "delivered"))
    assert again.status == "duplicate"
    assert responses.replay_unhandled_webhooks(db.factory, config, now=now).applied == 0


def test_a_status_that_only_advances_the_message_is_applied_at_once(db, config):
    sid = seed_survey(db, state="delivered")
    msg = survey_of(db, sid).provider_message_id
    with db.session() as s, s.begin():
        s.execute(update(MessageRecord).values(status="delivered"))
    for status in ("sent", "queued"):  # late: ranked below what the message has
        raw = twilio_status(sid, msg, status)
        assert responses.take_delivery_event(db.factory, raw).status == "applied"
        assert responses.take_delivery_event(db.factory, raw).status == "duplicate"
    assert message_status(db, sid) == "delivered" and unhandled(db) == []
    with db.session() as s:
        rows = s.execute(select(InboundEvent.survey_id, InboundEvent.result)).all()
    assert sorted(rows) == [(sid, "message queued"), (sid, "message sent")]


def test_a_status_for_no_recorded_message_waits_for_the_replay(db, config):
    sid = seed_survey(db, state="sending")
    raw = twilio_status(sid, "SMnotyet", "sent")
    assert responses.take_delivery_event(db.factory, raw).status == "stored"
    responses.replay_unhandled_webhooks(db.factory, config, now=utcnow())
    assert survey_of(db, sid).state == "sent"


def test_a_row_left_by_a_request_that_died_waits_a_minute(db, config):
    """Stored for a request that meant to apply it (``retry_at`` null) and never did."""
    sid = seed_survey(db, state="sent")
    msg = survey_of(db, sid).provider_message_id
    [stored] = responses.store_webhooks(db.factory, [twilio_status(sid, msg, "delivered")])
    now = utcnow()
    assert responses.replay_unhandled_webhooks(db.factory, config, now=now).applied == 0
    later = now + timedelta(minutes=2)
    assert responses.replay_unhandled_webhooks(db.factory, config, now=later).applied == 1
    assert survey_of(db, sid).state == "delivered" and stored.pending


def test_a_replay_batch_applies_each_row_on_its_own_in_one_commit(db, config, monkeypatch):
    """Rows in order, one failure rolled back alone and recorded, the others applied, one
    commit for the batch; two events of one survey in the same batch see each other."""
    first = seed_survey(db, state="sent")
    second = seed_survey(db, state="sent")
    m1, m2 = (survey_of(db, i).provider_message_id for i in (first, second))
    now = utcnow()
    for raw in (
        twilio_status(first, m1, "delivered"),
        twilio_status(second, m2, "undelivered", "30003"),
        twilio_status(first, m1, "failed", "30005"),  # after delivered: no step back
    ):
        assert responses.take_delivery_event(db.factory, raw, now=now).status == "stored"
    real = responses.apply_delivery_event

    def flaky(session, ev, cfg, at):
        if ev.provider_message_id == m2:
            raise RuntimeError("deadlock detected")
        return real(session, ev, cfg, at)

    monkeypatch.setattr(responses, "apply_delivery_event", flaky)
    commits: list[int] = []

    def on_commit(_conn) -> None:
        commits.append(1)

    event.listen(db.engine, "commit", on_commit)
    try:
        report = responses.replay_unhandled_webhooks(db.factory, config, now=now)
    finally:
        event.remove(db.engine, "commit", on_commit)
    assert (report.applied, report.failed) == (2, 1)
    assert len(commits) == 1
    assert survey_of(db, first).state == "delivered"
    assert survey_of(db, second).state == "sent"
    assert unhandled(db) == [(f"{m2}:undelivered", 1)]
    with db.session() as s:
        moves = s.scalars(
            select(SurveyTransition.to_state).where(SurveyTransition.survey_id == first)
        ).all()
    assert moves == ["delivered"]
    monkeypatch.undo()
    later = now + timedelta(minutes=2)
    assert responses.replay_unhandled_webhooks(db.factory, config, now=later).applied == 1
    assert survey_of(db, second).state == "undeliverable" and unhandled(db) == []
