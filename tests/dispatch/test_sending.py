"""Sending end to end through the real channels, with respx only at the provider boundary."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from channels.links import AnswerLinks
from channels.registry import channels_from_env
from dispatch.ratelimit import InProcessRateLimiter
from dispatch.scheduler import Scheduler
from dispatch.sending import MAX_SEND_ATTEMPTS, Sender
from ingest.service import ingest_event
from models import ConsentRecord, MessageRecord, Survey, current_consent
from tests.conftest import Database
from tests.factories import consent_event, order_event, purchase

TWILIO_ENV = {
    "TWILIO_ACCOUNT_SID": "AC" + "a" * 32,
    "TWILIO_AUTH_TOKEN": "twilio-token",
    "TWILIO_FROM": "+15005550006",
    "TWILIO_API_BASE": "https://twilio.test",
}
SENDGRID_ENV = {
    "SENDGRID_API_KEY": "SG.test-key",
    "SENDGRID_FROM": "surveys@shop.example",
    "SENDGRID_UNSUBSCRIBE_GROUP_ID": "42",
    "SENDGRID_API_BASE": "https://sendgrid.test",
}
TWILIO_MESSAGES = (
    f"https://twilio.test/2010-04-01/Accounts/{TWILIO_ENV['TWILIO_ACCOUNT_SID']}/Messages.json"
)
SENDGRID_SEND = "https://sendgrid.test/v3/mail/send"
BASE = "https://nps.example.test"
# Tuesday 24 November 2026, 12:00 in Bucharest: inside send hours.
NOON = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def providers_configured(monkeypatch):
    for key, value in {**TWILIO_ENV, **SENDGRID_ENV}.items():
        monkeypatch.setenv(key, value)


def make_sender(db: Database) -> Sender:
    return Sender(
        db.factory,
        channels_from_env({**TWILIO_ENV, **SENDGRID_ENV}),
        AnswerLinks("test-secret-key", BASE),
        BASE,
        rate_limiter=InProcessRateLimiter(sleep=lambda _s: None),
    )


def queued_survey(db: Database, config, *, consent=None, order_id="A-1") -> int:
    """A purchase, its delivery, and a scheduler pass: one survey in `queued`."""
    ingest_event(
        db.factory,
        purchase(order_id, at="2026-11-18T10:00:00Z", consent=consent or {"email": True}),
        config,
        NOON,
    )
    ingest_event(
        db.factory, order_event("delivered", order_id, at="2026-11-19T10:00:00Z"), config, NOON
    )
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, NOON)
    assert len(enqueued) == 1
    return enqueued[0]


def survey(db: Database, survey_id: int) -> Survey | None:
    with db.session() as s:
        return s.get(Survey, survey_id)


def twilio_created(sid: str = "SM" + "1" * 32) -> httpx.Response:
    return httpx.Response(
        201,
        json={
            "sid": sid,
            "status": "queued",
            "account_sid": TWILIO_ENV["TWILIO_ACCOUNT_SID"],
            "num_segments": "1",
        },
    )


def test_sms_request_is_exact(db, config, respx_mock):
    sid = queued_survey(db, config, consent={"sms": True})
    route = respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created())
    outcome = make_sender(db).send(sid, config, NOON)
    assert outcome.state == "sent"
    request = route.calls.last.request
    form = parse_qs(request.content.decode())
    assert form["To"] == ["+40721000111"] and form["From"] == ["+15005550006"]
    assert form["StatusCallback"] == [f"{BASE}/webhooks/twilio/status?survey_id={sid}"]
    assert "Example Shop" in form["Body"][0] and "STOP" in form["Body"][0]
    assert request.headers["Authorization"].startswith("Basic ")
    row = survey(db, sid)
    assert (row.state, row.provider, row.provider_message_id) == ("sent", "twilio", "SM" + "1" * 32)


def test_email_request_is_exact_and_links_verify(db, config, respx_mock):
    sid = queued_survey(db, config)
    route = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "msg-1"})
    assert make_sender(db).send(sid, config, NOON).state == "sent"
    request = route.calls.last.request
    assert request.headers["Authorization"] == "Bearer SG.test-key"
    body = json.loads(request.content)
    assert body["personalizations"][0]["to"] == [{"email": "ana@example.com"}]
    assert body["custom_args"] == {"survey_id": str(sid)}  # nothing personal rides along
    assert body["asm"]["group_id"] == 42
    headers = body["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["List-Unsubscribe"].startswith(f"<{BASE}/s/")
    assert headers["List-Unsubscribe"].endswith("/unsubscribe>")
    html = next(c["value"] for c in body["content"] if c["type"] == "text/html")
    links = [w.split('"')[0] for w in html.split('href="')[1:] if "score=" in w]
    assert [parse_qs(urlsplit(u.replace("&amp;", "&")).query)["score"] for u in links] == [
        [str(n)] for n in range(11)
    ]
    verifier = AnswerLinks("test-secret-key", BASE)
    token = urlsplit(links[9]).path.rsplit("/", 1)[1]
    assert verifier.verify(token, NOON) == sid


def test_429_then_success_sends_one_message(db, config, respx_mock):
    sid = queued_survey(db, config, consent={"sms": True})
    route = respx_mock.post(TWILIO_MESSAGES).mock(
        side_effect=[
            httpx.Response(
                429,
                headers={"Retry-After": "30"},
                json={"code": 20429, "message": "Too Many Requests", "status": 429},
            ),
            twilio_created(),
        ]
    )
    sender = make_sender(db)
    outcome = sender.send(sid, config, NOON)
    assert outcome.state == "scheduled"
    row = survey(db, sid)
    assert row.due_at == NOON + timedelta(seconds=30)  # Retry-After honoured, in the row
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, NOON + timedelta(seconds=10))
    assert enqueued == []  # not before Retry-After
    Scheduler(db.factory, enqueued.append).tick(config, NOON + timedelta(seconds=31))
    assert enqueued == [sid]
    assert sender.send(sid, config, NOON + timedelta(seconds=31)).state == "sent"
    assert route.call_count == 2
    with db.session() as s:
        assert len(s.scalars(select(MessageRecord)).all()) == 1


def test_timeout_after_acceptance_is_not_resent_and_settles(db, config, respx_mock):
    sid = queued_survey(db, config, consent={"sms": True})
    post = respx_mock.post(TWILIO_MESSAGES).mock(side_effect=httpx.ReadTimeout("read timed out"))
    sender = make_sender(db)
    assert sender.send(sid, config, NOON).state == "sending"
    # A duplicate queue message changes nothing: the row is no longer `queued`.
    assert sender.send(sid, config, NOON).state == "sending"
    assert post.call_count == 1
    # The reconciler finds the message in Twilio's log (same recipient, sender and body):
    # sent, with its sid, no second POST.
    lookup = respx_mock.get(TWILIO_MESSAGES).respond(
        200,
        json={
            "messages": [
                {
                    "sid": "SM" + "7" * 32,
                    "status": "delivered",
                    "direction": "outbound-api",
                    "to": "+40721000111",
                    "from": TWILIO_ENV["TWILIO_FROM"],
                    "body": parse_qs(post.calls.last.request.content.decode())["Body"][0],
                    "date_created": "Tue, 24 Nov 2026 10:00:01 +0000",
                }
            ],
            "next_page_uri": None,
            "page": 0,
            "page_size": 50,
        },
    )
    result = sender.settle(sid, config, NOON + timedelta(minutes=5), timedelta(hours=1))
    assert result == "sent (found by lookup)"
    assert lookup.called and post.call_count == 1
    row = survey(db, sid)
    assert (row.state, row.provider_message_id) == ("sent", "SM" + "7" * 32)


def test_timeout_with_nothing_found_ends_send_unknown(db, config, respx_mock, caplog):
    sid = queued_survey(db, config, consent={"sms": True})
    post = respx_mock.post(TWILIO_MESSAGES).mock(side_effect=httpx.ReadTimeout("read timed out"))
    respx_mock.get(TWILIO_MESSAGES).respond(
        200, json={"messages": [], "next_page_uri": None, "page": 0, "page_size": 50}
    )
    sender = make_sender(db)
    sender.send(sid, config, NOON)
    assert sender.settle(sid, config, NOON + timedelta(minutes=5), timedelta(hours=1)) == (
        "waiting for a callback"
    )
    with caplog.at_level(logging.ERROR):
        assert sender.settle(sid, config, NOON + timedelta(hours=2), timedelta(hours=1)) == (
            "send_unknown"
        )
    assert survey(db, sid).state == "send_unknown"
    assert post.call_count == 1
    assert "ALERT" in caplog.text


def test_21610_revokes_sms_consent_and_falls_back_to_email(db, config, respx_mock):
    sid = queued_survey(db, config, consent={"sms": True, "email": True})
    # Default preference is email first; make SMS the first choice for this test.
    cfg = config.model_copy(
        update={"contact": config.contact.model_copy(update={"channels": ("sms", "email")})}
    )
    with db.session() as s, s.begin():
        s.get(Survey, sid).channel = "sms"
        s.get(Survey, sid).tried_channels = "sms"
    respx_mock.post(TWILIO_MESSAGES).respond(
        400,
        json={"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400},
    )
    email = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "msg-2"})
    sender = make_sender(db)
    outcome = sender.send(sid, cfg, NOON)
    assert outcome.requeue and outcome.state == "queued"
    with db.session() as s:
        customer_id = s.get(Survey, sid).customer_id
        assert current_consent(s, customer_id, "sms") is False
        evidence = s.scalars(
            select(ConsentRecord)
            .where(ConsentRecord.channel == "sms")
            .order_by(ConsentRecord.id.desc())
        ).first()
        assert (evidence.evidence_kind, evidence.evidence_ref) == ("provider", "error 21610")
    assert sender.send(sid, cfg, NOON).state == "sent"
    assert email.call_count == 1
    row = survey(db, sid)
    assert (row.channel, row.tried_channels, row.provider) == ("email", "sms,email", "sendgrid")


def test_429_forever_ends_failed_with_reason_and_alert(db, config, respx_mock, caplog):
    # A refusal that created nothing is retried with backoff, within a budget of attempts.
    # (A 5xx is not retried at all: the mail may have been accepted; see test_send_promises.)
    sid = queued_survey(db, config)
    route = respx_mock.post(SENDGRID_SEND).respond(
        429, json={"errors": [{"message": "too many requests"}]}
    )
    sender = make_sender(db)
    now = NOON
    with caplog.at_level(logging.ERROR):
        for _ in range(MAX_SEND_ATTEMPTS + 4):
            enqueued: list[int] = []
            Scheduler(db.factory, enqueued.append).tick(config, now)
            for survey_id in enqueued:
                sender.send(survey_id, config, now)
            now += timedelta(days=1)  # past any backoff, at noon (Sunday waits for Monday)
    row = survey(db, sid)
    assert row.state == "failed"
    assert f"gave up after {MAX_SEND_ATTEMPTS} attempts" in row.final_reason
    assert route.call_count == MAX_SEND_ATTEMPTS
    assert "ALERT" in caplog.text


def test_consent_revoked_between_scheduling_and_sending_sends_nothing(db, config, respx_mock):
    sid = queued_survey(db, config)
    route = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "m"})
    ingest_event(db.factory, consent_event("revoked", "c-1", email=False), config, NOON)
    assert make_sender(db).send(sid, config, NOON).state == "suppressed"
    assert not route.called


def test_crash_between_provider_call_and_commit_yields_one_message(
    db, config, respx_mock, monkeypatch
):
    sid = queued_survey(db, config, consent={"sms": True})
    post = respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created("SM" + "9" * 32))
    sender = make_sender(db)

    def crash(*_args, **_kwargs):
        raise SystemExit("worker killed after the provider accepted the message")

    monkeypatch.setattr(sender, "_record_sent", crash)
    with pytest.raises(SystemExit):
        sender.send(sid, config, NOON)
    monkeypatch.undo()
    for key, value in {**TWILIO_ENV, **SENDGRID_ENV}.items():
        monkeypatch.setenv(key, value)
    # dramatiq redelivers the message, and the scheduler's stuck-queue pass runs: nothing more.
    assert make_sender(db).send(sid, config, NOON + timedelta(minutes=1)).state == "sending"
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, NOON + timedelta(minutes=30))
    assert enqueued == []
    respx_mock.get(TWILIO_MESSAGES).respond(
        200,
        json={
            "messages": [
                {
                    "sid": "SM" + "9" * 32,
                    "status": "sent",
                    "direction": "outbound-api",
                    "to": "+40721000111",
                    "from": TWILIO_ENV["TWILIO_FROM"],
                    "body": parse_qs(post.calls.last.request.content.decode())["Body"][0],
                    "date_created": "Tue, 24 Nov 2026 10:00:00 +0000",
                }
            ],
            "next_page_uri": None,
            "page": 0,
            "page_size": 50,
        },
    )
    sender2 = make_sender(db)
    assert sender2.settle(sid, config, NOON + timedelta(minutes=5), timedelta(hours=1)) == (
        "sent (found by lookup)"
    )
    assert post.call_count == 1
    assert survey(db, sid).state == "sent"


def test_reminder_once_never_after_answer(db, config, respx_mock):
    sid = queued_survey(db, config)
    route = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "m"})
    sender = make_sender(db)
    sender.send(sid, config, NOON)
    row = survey(db, sid)
    assert row.next_reminder_at == NOON + config.survey.reminder.after
    reminders: list[tuple[int, int]] = []
    scheduler = Scheduler(
        db.factory, lambda _i: None, enqueue_reminder=lambda i, n: reminders.append((i, n))
    )
    later = row.next_reminder_at + timedelta(minutes=1)
    scheduler.tick(config, later)
    assert reminders == [(sid, 0)]
    # The message arrives twice: one reminder.
    assert sender.send_reminder(sid, 0, config, later) == "reminder sent"
    assert sender.send_reminder(sid, 0, config, later) == "reminder already sent"
    assert route.call_count == 2  # invitation + one reminder
    scheduler.tick(config, later + timedelta(days=30))
    assert reminders == [(sid, 0)]  # max = 1


def test_no_reminder_after_an_answer(db, config, respx_mock):
    from models import move
    from models.lifecycle import SurveyState

    sid = queued_survey(db, config)
    route = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "m"})
    sender = make_sender(db)
    sender.send(sid, config, NOON)
    with db.session() as s, s.begin():
        move(s, sid, SurveyState.answered, score=9)
    assert sender.send_reminder(sid, 0, config, NOON + timedelta(days=4)) == (
        "not open: no reminder"
    )
    assert route.call_count == 1
