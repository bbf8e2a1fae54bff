"""dispatch.responses.intake and the replay that applies what it leaves stored, on real
databases: nothing stored is lost, a duplicate has one effect, late statuses never go back."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy import event, select, update
from sqlalchemy.exc import OperationalError

from dispatch import responses
from models import InboundEvent, MessageRecord, SurveyTransition, utcnow
from tests.conftest import Database
from tests.dispatch.test_responses import inbound, seed_survey, survey_of, twilio_status


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


def failing_on(monkeypatch, message_id: str, fail: Callable[[Any], None]) -> None:
    """Applying the event about ``message_id`` fails as ``fail(session)`` does, whether the
    replay applies it one by one or in a run with others (the run then goes one by one)."""
    real_one, real_run = responses.apply_delivery_event, responses.apply_delivery_events

    def one(session, ev, cfg, at):
        if ev.provider_message_id == message_id:
            fail(session)
        return real_one(session, ev, cfg, at)

    def run(session, events, cfg, at):
        if any(ev.provider_message_id == message_id for ev in events):
            fail(session)
        return real_run(session, events, cfg, at)

    monkeypatch.setattr(responses, "apply_delivery_event", one)
    monkeypatch.setattr(responses, "apply_delivery_events", run)


def deadlocked(session: Any) -> None:
    raise RuntimeError("deadlock detected")


def losing_the_connection(session: Any) -> None:
    session.connection().invalidate()  # as a server restart would
    raise RuntimeError("server closed the connection unexpectedly")


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
    failing_on(monkeypatch, m2, deadlocked)
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


def test_a_row_that_fails_its_whole_batch_fails_alone_and_is_counted(db, config, monkeypatch):
    """Applying one row loses the batch's connection, which no savepoint contains: the batch is
    applied again row by row, so the others apply and that row's failure is counted and backs
    off, instead of the whole batch failing, uncounted, on every pass."""
    first, poison, third = (seed_survey(db, state="sent") for _ in range(3))
    messages = {i: survey_of(db, i).provider_message_id for i in (first, poison, third)}
    now = utcnow()
    for sid, msg in messages.items():
        raw = twilio_status(sid, msg, "delivered")
        assert responses.take_delivery_event(db.factory, raw, now=now).status == "stored"
    failing_on(monkeypatch, messages[poison], losing_the_connection)
    report = responses.replay_unhandled_webhooks(db.factory, config, now=now)
    assert (report.applied, report.failed) == (2, 1)
    assert [survey_of(db, i).state for i in (first, poison, third)] == [
        "delivered",
        "sent",
        "delivered",
    ]
    assert unhandled(db) == [(f"{messages[poison]}:delivered", 1)]
    # Backed off like any failure: not tried again at once, tried again after the pause.
    assert responses.replay_unhandled_webhooks(db.factory, config, now=now).failed == 0
    later = now + responses.replay_pause(1)
    assert responses.replay_unhandled_webhooks(db.factory, config, now=later).failed == 1
    assert unhandled(db) == [(f"{messages[poison]}:delivered", 2)]


def test_a_connection_the_server_closed_is_replaced_once(pg_db, config):
    """Pooled connections are not pinged: a webhook that meets one the server closed (a
    restart) runs once more on a new one, and is stored and applied once."""
    db = pg_db
    dsn = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    sid = seed_survey(db, state="sent")
    msg = survey_of(db, sid).provider_message_id
    assert responses.take_delivery_event(db.factory, twilio_status(sid, msg, "sent")).status == (
        "applied"
    )
    for raw, expected in (
        (twilio_status(sid, msg, "delivered"), "stored"),
        (inbound("9"), "applied"),
    ):
        # Every pooled session of this database ends, as in a server restart.
        with psycopg.connect(dsn, autocommit=True) as outside:  # not one of the pool's
            outside.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        if raw.event_type == "inbound_sms":
            handled = responses.take_inbound_sms(db.factory, config, raw)
            assert handled.status == expected and handled.reply is not None
        else:
            assert responses.take_delivery_event(db.factory, raw).status == expected
    responses.replay_unhandled_webhooks(db.factory, config, now=utcnow())
    survey = survey_of(db, sid)
    assert (survey.state, survey.score) == ("answered", 9)
    assert unhandled(db) == []


def test_a_backlog_is_read_a_load_at_a_time_within_the_pass_budget(db, config):
    surveys = [seed_survey(db, state="sent") for _ in range(5)]
    now = utcnow()
    for sid in surveys:
        raw = twilio_status(sid, survey_of(db, sid).provider_message_id, "delivered")
        responses.take_delivery_event(db.factory, raw, now=now)
    one_load = responses.replay_unhandled_webhooks(
        db.factory, config, now=now, limit=2, budget_seconds=0
    )
    assert one_load.applied == 2
    rest = responses.replay_unhandled_webhooks(db.factory, config, now=now, limit=2)
    assert rest.applied == 3 and unhandled(db) == []
    assert {survey_of(db, sid).state for sid in surveys} == {"delivered"}


def _stored(db, n):
    now = utcnow()
    sids = [seed_survey(db, state="sent") for _ in range(n)]
    msgs = {sid: survey_of(db, sid).provider_message_id for sid in sids}
    for sid, msg in msgs.items():
        raw = twilio_status(sid, msg, "delivered")
        assert responses.take_delivery_event(db.factory, raw, now=now).status == "stored"
    return now, sids, msgs


def test_an_outage_stops_the_replay_pass_instead_of_trying_every_row(db, config, caplog):
    """The database goes away just after the pass read its ids: the batch, its first row alone
    and that row's count are tried, then the pass stops, instead of every row of every batch
    trying twice (each try may wait out a connect time-out)."""
    now, _, _ = _stored(db, 45)  # three batches
    real = db.factory
    calls = {"n": 0}

    def factory():
        calls["n"] += 1
        if calls["n"] == 1:
            return real()  # the id read
        raise OperationalError("connect", {}, Exception("connection refused"))

    factory.kw = real.kw
    with caplog.at_level(logging.WARNING):
        report = responses.replay_unhandled_webhooks(factory, config, now=now)
    assert report.failed == 1  # the row tried alone; the others wait for the next pass
    # Not counted (good): the attempts stay 0.
    with db.session() as s:
        assert set(s.scalars(select(InboundEvent.attempts))) == {0}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert calls["n"] - 1 == 3, f"{calls['n'] - 1} transactions opened during the outage"
    assert len(warnings) == 2, [r.getMessage() for r in warnings]


def test_the_recorded_error_of_a_lost_row_names_its_cause(db, config, monkeypatch):
    """The row's error names what broke its transaction, not the refusal of the statements
    after it: an operator looking at a given-up row sees why."""
    now, sids, msgs = _stored(db, 2)
    failing_on(monkeypatch, msgs[sids[1]], losing_the_connection)
    report = responses.replay_unhandled_webhooks(db.factory, config, now=now)
    assert (report.applied, report.failed) == (1, 1)
    with db.session() as s:
        [error] = s.scalars(select(InboundEvent.error).where(InboundEvent.handled_at.is_(None)))
    assert "server closed the connection" in error, error
