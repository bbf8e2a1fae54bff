"""A scheduler pass survives a failing step; a webhook that keeps failing backs off.

Real databases (SQLite and PostgreSQL), the real Sender and the real webhook replay; the
failures come from the injected hooks (settle, enqueue) or from a database error raised while a
stored webhook is applied.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from prometheus_client import REGISTRY
from sqlalchemy import func, insert, select
from sqlalchemy.exc import StatementError
from twilio.base.exceptions import TwilioException

from channels.base import ChannelName
from channels.console.send import ConsoleChannel
from channels.links import AnswerLinks
from dispatch import responses
from dispatch.ratelimit import InProcessRateLimiter
from dispatch.responses import REPLAY_MAX_ATTEMPTS
from dispatch.scheduler import Scheduler
from dispatch.sending import Sender
from dispatch.tick_report import STEPS, TickReport
from models import InboundEvent, SurveyTransition
from tests.conftest import NOW, Database
from tests.dispatch.test_responses import PHONE, seed_survey, survey_of, twilio_status
from web.metrics import DatabaseCollector

# A pass one hour after NOW (12:00 in Berlin on a Friday: inside send hours).
PASS = NOW + timedelta(hours=1)
EMAIL = "bruno@example.com"


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    """The wall clock held still (rows stamped by the code take it), moved by the tests."""
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def failures_counted(step: str) -> float:
    value = REGISTRY.get_sample_value("nps_scheduler_step_failures_total", {"step": step})
    return value or 0.0


def console_sender(db: Database) -> Sender:
    return Sender(
        db.factory,
        {
            ChannelName.email: ConsoleChannel(ChannelName.email, stream=io.StringIO()),
            ChannelName.sms: ConsoleChannel(ChannelName.sms, stream=io.StringIO()),
        },
        AnswerLinks("k", "https://nps.example.test"),
        "https://nps.example.test",
        rate_limiter=InProcessRateLimiter(sleep=lambda _seconds: None),
    )


def seed_pass_work(db: Database, config: Any) -> dict[str, int]:
    """One survey for each step of a pass, all due at PASS."""
    ids = {
        "due": seed_survey(
            db,
            state="scheduled",
            customer="c-due",
            phone="+40721000201",
            now=NOW,
            due_at=PASS - timedelta(minutes=1),
            config_version=config.schedule_version,
        ),
        "stuck": seed_survey(
            db,
            state="sending",
            customer="c-stuck",
            phone="+40721000202",
            now=NOW,
            sending_at=PASS - timedelta(hours=2),
        ),
        "reminder": seed_survey(
            db,
            state="delivered",
            customer="c-remind",
            phone="+40721000203",
            now=NOW,
            next_reminder_at=PASS - timedelta(minutes=1),
        ),
        "closing": seed_survey(
            db,
            state="sent",
            customer="c-close",
            phone="+40721000204",
            now=NOW,
            closes_at=PASS - timedelta(minutes=1),
        ),
        "callback": seed_survey(
            db, state="sent", customer="c-callback", phone="+40721000205", now=NOW
        ),
    }
    # A status callback stored by a web process that died before applying it.
    pmid = survey_of(db, ids["callback"]).provider_message_id
    [stored] = responses.store_webhooks(
        db.factory, [twilio_status(ids["callback"], pmid, "delivered")]
    )
    ids["webhook_row"] = stored.row_id
    # A raw payload applied 31 days ago: its personal data is due for pruning.
    with db.session() as s, s.begin():
        ids["old_row"] = s.execute(
            insert(InboundEvent)
            .values(
                source="twilio_inbound",
                external_id="SMold",
                event_type="inbound_sms",
                payload={"form": {"From": PHONE, "Body": "9"}},
                received_at=PASS - timedelta(days=31),
                handled_at=PASS - timedelta(days=31),
            )
            .returning(InboundEvent.id)
        ).scalar_one()
    return ids


def assert_other_steps_ran(db: Database, ids: dict[str, int], report: TickReport) -> None:
    assert survey_of(db, ids["closing"]).state == "no_response"
    assert survey_of(db, ids["callback"]).state == "delivered"  # the webhook was replayed
    assert report.reminders == 1 and report.closed == 1 and report.pruned == 1
    with db.session() as s:
        replayed = s.get(InboundEvent, ids["webhook_row"])
        assert replayed is not None and replayed.handled_at == PASS
        pruned = s.get(InboundEvent, ids["old_row"])
        assert pruned is not None and pruned.payload is None


def test_a_raising_settle_hook_does_not_stop_the_pass(db: Database, config, clock):
    """The Twilio lookup behind settle answers 503 with an HTML page: the client raises."""
    ids = seed_pass_work(db, config)

    def settle(survey_id: int, now: datetime) -> object:
        raise TwilioException("Unable to fetch page: HTTP 503 <html><body>Service Unavailable")

    enqueued: list[int] = []
    reminders: list[tuple[int, int]] = []
    scheduler = Scheduler(
        db.factory,
        enqueued.append,
        enqueue_reminder=lambda survey_id, sent: reminders.append((survey_id, sent)),
        settle=settle,
        replay_webhooks=lambda now: responses.replay_unhandled_webhooks(
            db.factory, config, now=now
        ),
    )
    before = failures_counted("settle")

    report = scheduler.tick(config, PASS)

    assert report.failures == {"settle": 1} and report.settled == 0
    assert failures_counted("settle") == before + 1
    assert enqueued == [ids["due"]] and survey_of(db, ids["due"]).state == "queued"
    assert reminders == [(ids["reminder"], 0)]
    assert_other_steps_ran(db, ids, report)
    assert survey_of(db, ids["stuck"]).state == "sending"  # left for the next pass


def test_settling_is_isolated_per_survey(db: Database, config, clock):
    """One stuck send whose settling raises; the next one is settled by the real Sender."""
    broken = seed_survey(
        db,
        state="sending",
        customer="c-a",
        phone="+40721000211",
        now=NOW,
        sending_at=PASS - timedelta(hours=3),
    )
    fine = seed_survey(
        db,
        state="sending",
        customer="c-b",
        phone="+40721000212",
        now=NOW,
        sending_at=PASS - timedelta(hours=2),
    )
    sender = console_sender(db)

    def settle(survey_id: int, now: datetime) -> object:
        if survey_id == broken:
            raise RuntimeError("provider lookup blew up")
        return sender.settle(survey_id, config, now, timedelta(hours=1))

    report = Scheduler(db.factory, lambda _i: None, settle=settle).tick(config, PASS)

    assert report.failures == {"settle": 1} and report.settled == 1
    assert survey_of(db, broken).state == "sending"
    assert survey_of(db, fine).state == "send_unknown"  # settled, never re-sent


def test_a_failing_step_is_counted_and_the_later_steps_run(db: Database, config, clock):
    """The broker is down: enqueueing raises. Claimed rows stay `queued`, their lease expired,
    so the stuck-queue sweep tries them again at once (and fails too); reminders, closing,
    replay and pruning still happen."""
    ids = seed_pass_work(db, config)

    def broker_down(_survey_id: int) -> None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    reminders: list[tuple[int, int]] = []
    before = {step: failures_counted(step) for step in STEPS}
    report = Scheduler(
        db.factory,
        broker_down,
        enqueue_reminder=lambda survey_id, sent: reminders.append((survey_id, sent)),
        replay_webhooks=lambda now: responses.replay_unhandled_webhooks(
            db.factory, config, now=now
        ),
    ).tick(config, PASS)

    assert report.failures == {"claim_due": 1, "requeue_stuck": 1}
    assert {step: failures_counted(step) - before[step] for step in STEPS} == {
        step: (1.0 if step in ("claim_due", "requeue_stuck") else 0.0) for step in STEPS
    }
    assert survey_of(db, ids["due"]).state == "queued"
    assert reminders == [(ids["reminder"], 0)]
    assert_other_steps_ran(db, ids, report)
    # Once the broker is back, the `queued` row goes out on the next pass.
    enqueued: list[int] = []
    later = Scheduler(db.factory, enqueued.append).tick(config, PASS + timedelta(seconds=5))
    assert enqueued == [ids["due"]] and later.failures == {}


def test_a_step_failure_logs_no_personal_data(db: Database, config, clock, caplog):
    seed_survey(
        db,
        state="sending",
        customer="c-log",
        phone="+40721000221",
        now=NOW,
        sending_at=PASS - timedelta(hours=2),
    )

    def settle(survey_id: int, now: datetime) -> object:
        raise StatementError(
            f"lookup failed for {PHONE}",
            "SELECT * FROM customers WHERE email = %(email)s",
            {"email": EMAIL, "first_name": "Ana"},
            ValueError(EMAIL),
        )

    def enqueue_reminder(_survey_id: int, _sent: int) -> None:
        raise ValueError(f"no route to {EMAIL} / %2B40721000221")

    seed_survey(
        db,
        state="delivered",
        customer="c-log2",
        phone="+40721000222",
        now=NOW,
        next_reminder_at=PASS - timedelta(minutes=1),
    )
    with caplog.at_level(logging.INFO, logger="dispatch.scheduler"):
        report = Scheduler(
            db.factory, lambda _i: None, settle=settle, enqueue_reminder=enqueue_reminder
        ).tick(config, PASS)

    assert report.failures == {"settle": 1, "reminders": 1}
    lines = [r.getMessage() for r in caplog.records if r.name == "dispatch.scheduler"]
    text = "\n".join(lines)
    assert "StatementError" in text and "ValueError" in text and "reminders" in text
    for secret in (PHONE, EMAIL, "+40721000221", "Ana", "SELECT", "%2B"):
        assert secret not in text, secret
    assert all(r.exc_info is None for r in caplog.records)  # no traceback with the message


# --- webhook replay back-off -------------------------------------------------------------------


class FlakyApply:
    """Applies a delivery event, then fails with a real database error while ``broken``: the
    survey has already moved when it fails, so a half-written effect would show."""

    def __init__(self) -> None:
        self.broken = True
        self.calls = 0
        self.real = responses.apply_delivery_event

    def __call__(self, session: Any, event: Any, config: Any, now: datetime) -> Any:
        self.calls += 1
        applied = self.real(session, event, config, now)
        if self.broken:
            # A duplicate ledger key: IntegrityError, which aborts a PostgreSQL transaction.
            for _ in range(2):
                session.execute(
                    insert(InboundEvent).values(
                        source="probe",
                        external_id="dup",
                        event_type="x",
                        payload={"to": PHONE},
                        received_at=now,
                    )
                )
        return applied


def row_of(db: Database, row_id: int) -> InboundEvent:
    with db.session() as s:
        row = s.get(InboundEvent, row_id)
        assert row is not None
        return row


def transitions(db: Database, survey_id: int) -> int:
    with db.session() as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(SurveyTransition)
                .where(SurveyTransition.survey_id == survey_id)
            )
            or 0
        )


def test_a_failing_webhook_backs_off_then_applies(db: Database, config, clock, monkeypatch):
    sid = seed_survey(db, state="sent", now=NOW)
    pmid = survey_of(db, sid).provider_message_id
    flaky = FlakyApply()
    monkeypatch.setattr(responses, "apply_delivery_event", flaky)
    scheduler = Scheduler(
        db.factory,
        lambda _i: None,
        replay_webhooks=lambda now: responses.replay_unhandled_webhooks(
            db.factory, config, now=now
        ),
    )

    [handled] = responses.ingest_webhooks(
        db.factory, config, [twilio_status(sid, pmid, "delivered")], now=NOW
    )
    assert handled.status == "failed"
    row_id = handled.row_id
    # Nothing of the failed application stays: the survey has not moved, no transition.
    assert survey_of(db, sid).state == "sent" and transitions(db, sid) == 0
    first = row_of(db, row_id)
    assert first.attempts == 1 and first.retry_at == NOW + timedelta(minutes=1)
    assert first.handled_at is None and "IntegrityError" in first.error
    assert PHONE not in first.error and "[SQL" not in first.error

    # A pass every 30 seconds for two hours: replays only when each back-off has passed.
    retry_times = [first.retry_at]
    at = NOW
    while at < NOW + timedelta(hours=2):
        at += timedelta(seconds=30)
        clock.move_to(at)
        report = scheduler.tick(config, at)
        assert report.failures == {}  # a failed replay is the row's business, not a step failure
        row = row_of(db, row_id)
        if row.retry_at != retry_times[-1]:
            retry_times.append(row.retry_at)
    pauses = [b - a for a, b in itertools.pairwise(retry_times)]
    # Each pause starts from the attempt at (or up to one pass after) the previous retry time.
    expected = [timedelta(minutes=2**k) for k in range(1, len(pauses) + 1)]
    assert all(e <= p <= e + timedelta(seconds=30) for p, e in zip(pauses, expected, strict=True))
    assert flaky.calls == len(retry_times) == row_of(db, row_id).attempts == 7  # not 240
    assert survey_of(db, sid).state == "sent" and transitions(db, sid) == 0

    # The cause is gone: the next due replay applies it, once.
    flaky.broken = False
    due = row_of(db, row_id).retry_at
    clock.move_to(due)
    scheduler.tick(config, due)
    row = row_of(db, row_id)
    assert row.handled_at == due and row.error is None and row.retry_at is None
    assert row.result == "delivered" and survey_of(db, sid).state == "delivered"
    scheduler.tick(config, due + timedelta(days=1))
    assert flaky.calls == 8 and transitions(db, sid) == 1


def test_a_webhook_is_given_up_after_many_attempts(db: Database, config, clock, monkeypatch):
    sid = seed_survey(db, state="sent", now=NOW)
    pmid = survey_of(db, sid).provider_message_id
    flaky = FlakyApply()
    monkeypatch.setattr(responses, "apply_delivery_event", flaky)
    [stored] = responses.store_webhooks(db.factory, [twilio_status(sid, pmid, "delivered")])
    at = NOW + timedelta(minutes=1)
    for _ in range(REPLAY_MAX_ATTEMPTS):
        clock.move_to(at)
        assert responses.replay_unhandled_webhooks(db.factory, config, now=at).failed == 1
        retry_at = row_of(db, stored.row_id).retry_at
        assert retry_at is not None and retry_at > at
        at = retry_at
    assert flaky.calls == REPLAY_MAX_ATTEMPTS
    # No more replays, however late; the row stays, unapplied, with its error.
    later = NOW + timedelta(days=30)
    clock.move_to(later)
    report = responses.replay_unhandled_webhooks(db.factory, config, now=later)
    assert (report.applied, report.failed, flaky.calls) == (0, 0, REPLAY_MAX_ATTEMPTS)
    row = row_of(db, stored.row_id)
    assert row.handled_at is None and row.attempts == REPLAY_MAX_ATTEMPTS
    assert "IntegrityError" in row.error
    metrics = {m.name: m for m in DatabaseCollector(db.factory).collect()}
    assert metrics["nps_webhooks_given_up"].samples[0].value == 1
    assert metrics["nps_unhandled_webhooks"].samples[0].value == 1
    # The provider delivering the same event again still gets it applied once the cause is gone.
    flaky.broken = False
    [again] = responses.ingest_webhooks(
        db.factory, config, [twilio_status(sid, pmid, "delivered")], now=later
    )
    assert again.status == "applied" and survey_of(db, sid).state == "delivered"
    metrics = {m.name: m for m in DatabaseCollector(db.factory).collect()}
    assert metrics["nps_webhooks_given_up"].samples[0].value == 0


def test_replay_pause_doubles_from_a_minute_up_to_six_hours():
    pauses = [responses.replay_pause(n) for n in range(1, 12)]
    assert pauses[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert pauses[8] == timedelta(minutes=256) and pauses[9:] == [timedelta(hours=6)] * 2
    assert responses.replay_pause(10_000) == timedelta(hours=6)
