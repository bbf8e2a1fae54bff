"""Twilio webhooks over HTTP, signed with Twilio's own RequestValidator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from channels.base import ChannelName
from channels.console.send import ConsoleChannel
from channels.links import AnswerLinks
from config import load_config
from dispatch import responses
from dispatch.scheduler import Scheduler
from dispatch.sending import Sender
from models import (
    Answer,
    ConsentRecord,
    InboundEvent,
    MessageRecord,
    Survey,
    SurveyTransition,
    utcnow,
)
from tests.conftest import Database
from tests.dispatch.test_responses import PHONE, answers_of, seed_survey, survey_of
from web.app import create_app

TOKEN = "0123456789abcdef0123456789abcdef"
BASE = "https://nps.example.test"  # NPS_PUBLIC_BASE_URL of runtime_for


@pytest.fixture
def client(db: Database, runtime_for):
    return TestClient(create_app(runtime_for(db, TWILIO_AUTH_TOKEN=TOKEN)))


def signature(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params))


def post(client, path: str, params: dict[str, str], *, sign_url: str | None = None, **kw):
    """POST a form as Twilio does, signed over the public URL (or ``sign_url``)."""
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": signature(sign_url or BASE + path, params, **kw),
    }
    return client.post(path, content=urlencode(params).encode(), headers=headers)


def status_params(sid: str, status: str, error: str = "") -> dict[str, str]:
    params = {
        "AccountSid": "AC" + "a1" * 16,
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "To": PHONE,
        "From": "+15005550006",
        "ApiVersion": "2010-04-01",
    }
    if error:
        params["ErrorCode"] = error
    return params


_n = iter(range(10**6))


def sms_params(body: str, sender: str = PHONE, **extra: str) -> dict[str, str]:
    n = next(_n)
    return {
        "AccountSid": "AC" + "a1" * 16,
        "MessageSid": f"SM{n:032d}",
        "SmsMessageSid": f"SM{n:032d}",
        "From": sender,
        "To": "+15005550006",
        "Body": body,
        "NumMedia": "0",
        "FromCountry": "RO",  # Twilio adds fields without notice: never a whitelist
        **extra,
    }


def rows(db: Database, model) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def written(db: Database) -> tuple[int, ...]:
    return tuple(rows(db, m) for m in (InboundEvent, Answer, SurveyTransition, ConsentRecord))


# --- signatures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/webhooks/twilio/status?survey_id=1", "/webhooks/twilio/inbound"]
)
def test_forged_missing_and_misdirected_signatures_are_refused(client, db: Database, path):
    sid = seed_survey(db, state="sent")
    params = (
        status_params(survey_of(db, sid).provider_message_id, "delivered")
        if "status" in path
        else sms_params("STOP")
    )
    path = path.replace("survey_id=1", f"survey_id={sid}")
    before = written(db)
    body = urlencode(params).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    attempts = [
        {**form},  # missing
        {**form, "X-Twilio-Signature": ""},
        {**form, "X-Twilio-Signature": signature(BASE + path, params, token="f" * 32)},  # forged
        # Signed for the URL the app sees (its own host), not the public one Twilio called.
        {**form, "X-Twilio-Signature": signature("http://testserver" + path, params)},
        # Signed, then a parameter changed on the way.
        {**form, "X-Twilio-Signature": signature(BASE + path, {**params, "Body": "9"})},
    ]
    refused = REGISTRY.get_sample_value(
        "nps_webhook_verification_failures_total", {"source": "twilio"}
    )
    for headers in attempts:
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == 403
    assert written(db) == before
    assert REGISTRY.get_sample_value(
        "nps_webhook_verification_failures_total", {"source": "twilio"}
    ) == (refused or 0) + len(attempts)
    assert survey_of(db, sid).state == "sent"


def test_no_auth_token_configured_fails_closed(db: Database, runtime_for):
    client = TestClient(create_app(runtime_for(db)))
    params = sms_params("9")
    response = client.post(
        "/webhooks/twilio/inbound",
        content=urlencode(params).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature(BASE + "/webhooks/twilio/inbound", params, token=""),
        },
    )
    assert response.status_code == 403 and rows(db, InboundEvent) == 0


def test_oversized_body_is_refused_without_writing(client, db: Database):
    params = sms_params("x" * 70_000)
    assert post(client, "/webhooks/twilio/inbound", params).status_code == 413
    assert rows(db, InboundEvent) == 0


def test_signed_but_malformed_is_400(client, db: Database):
    response = post(client, "/webhooks/twilio/status", {"MessageStatus": "delivered"})
    assert response.status_code == 400 and rows(db, InboundEvent) == 0


# --- status callbacks ---------------------------------------------------------------------------


def replay(db: Database, later: timedelta = timedelta(0)) -> responses.ReplayReport:
    """The scheduler's next replay pass, which applies what the routes left stored."""
    return responses.replay_unhandled_webhooks(db.factory, load_config(None), now=utcnow() + later)


def message_status(db: Database, provider_message_id: str) -> str:
    with db.session() as s:
        return str(
            s.scalar(
                select(MessageRecord.status).where(
                    MessageRecord.provider_message_id == provider_message_id
                )
            )
        )


def test_status_callbacks_twice_and_out_of_order(client, db: Database):
    sid = seed_survey(db, state="sent")
    msg = survey_of(db, sid).provider_message_id
    path = f"/webhooks/twilio/status?survey_id={sid}"
    for status in ("delivered", "delivered", "sent", "queued", "delivered"):
        assert post(client, path, status_params(msg, status)).status_code == 204
    # "sent" and "queued" only advance the message: applied at once ("queued" ranks lower than
    # "sent", so it changes nothing); "delivered" moves the survey: stored for the replay.
    assert message_status(db, msg) == "sent"
    assert survey_of(db, sid).state == "sent"
    assert replay(db).applied == 1
    assert survey_of(db, sid).state == "delivered" and message_status(db, msg) == "delivered"
    assert rows(db, InboundEvent) == 3  # delivered, sent, queued: one row per provider id
    with db.session() as s:
        transitions = s.scalars(
            select(SurveyTransition.to_state).where(SurveyTransition.survey_id == sid)
        ).all()
        assert s.scalar(select(func.count()).where(InboundEvent.handled_at.is_(None))) == 0
    assert transitions == ["delivered"]
    # Late copies after the replay change nothing.
    for status in ("sent", "delivered"):
        assert post(client, path, status_params(msg, status)).status_code == 204
    assert replay(db).applied == 0 and message_status(db, msg) == "delivered"


def test_permanent_failure_callback(client, db: Database):
    sid = seed_survey(db, state="sent")
    msg = survey_of(db, sid).provider_message_id
    path = f"/webhooks/twilio/status?survey_id={sid}"
    post(client, path, status_params(msg, "undelivered", "30006"))
    replay(db)
    survey = survey_of(db, sid)
    assert survey.state == "undeliverable" and "30006" in survey.final_reason


def test_callback_before_our_commit(client, db: Database):
    """No message of ours has that id yet: the callback is kept and the replay settles it."""
    sid = seed_survey(db, state="sending")
    path = f"/webhooks/twilio/status?survey_id={sid}"
    assert post(client, path, status_params("SMfast", "sent")).status_code == 204
    assert survey_of(db, sid).state == "sending"
    replay(db)
    survey = survey_of(db, sid)
    assert survey.state == "sent" and survey.provider_message_id == "SMfast"


def test_a_callback_whose_application_fails_is_kept_and_applied_later(
    client, db: Database, monkeypatch
):
    sid = seed_survey(db, state="sent")
    msg = survey_of(db, sid).provider_message_id
    monkeypatch.setattr(responses, "apply_delivery_event", lambda *a, **k: 1 / 0)
    path = f"/webhooks/twilio/status?survey_id={sid}"
    assert post(client, path, status_params(msg, "delivered")).status_code == 204
    assert replay(db).failed == 1
    with db.session() as s:
        row = s.scalar(select(InboundEvent))
        assert row.handled_at is None and row.attempts == 1 and "ZeroDivisionError" in row.error
    monkeypatch.undo()
    assert replay(db).applied == 0  # not before its back-off
    assert replay(db, later=timedelta(minutes=2)).applied == 1
    assert survey_of(db, sid).state == "delivered"


def test_inbound_whose_application_fails_is_500_and_kept(client, db: Database, monkeypatch):
    sid = seed_survey(db, state="sent")
    monkeypatch.setattr(responses, "apply_inbound_sms", lambda *a, **k: 1 / 0)
    params = sms_params("STOP")
    assert post(client, "/webhooks/twilio/inbound", params).status_code == 500
    with db.session() as s:
        row = s.scalar(select(InboundEvent))
        assert row.handled_at is None and row.attempts == 1 and row.retry_at is not None
    monkeypatch.undo()
    # Twilio's retry of the same message applies the stored row at once.
    assert "<Message>" not in twiml(post(client, "/webhooks/twilio/inbound", params))
    assert survey_of(db, sid).state == "opted_out"
    assert rows(db, InboundEvent) == 1


# --- inbound SMS --------------------------------------------------------------------------------


def twiml(response) -> str:
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    return str(response.text)


def test_score_followup_comment_thanks(client, db: Database):
    sid = seed_survey(db, state="delivered")
    first = twiml(post(client, "/webhooks/twilio/inbound", sms_params("9/10")))
    assert "<Message>Thank you! What did you like most? Just reply" in first
    second = twiml(post(client, "/webhooks/twilio/inbound", sms_params("Quick & <easy>")))
    assert "Thank you for your feedback!" in second
    survey = survey_of(db, sid)
    assert (survey.state, survey.score, survey.comment) == ("completed", 9, "Quick & <easy>")


def test_reprompt_once_then_silence(client, db: Database):
    sid = seed_survey(db, state="sent")
    first = twiml(post(client, "/webhooks/twilio/inbound", sms_params("hmm")))
    assert "could not read a score" in first
    second = twiml(post(client, "/webhooks/twilio/inbound", sms_params("the courier was late")))
    assert "<Message>" not in second
    assert answers_of(db, sid) == [(None, "the courier was late", "sms")]


def test_localised_replies(client, db: Database):
    seed_survey(db, state="sent", locale="de-DE")
    reply = twiml(post(client, "/webhooks/twilio/inbound", sms_params("3")))
    assert "Was sollten wir verbessern?" in reply


def test_duplicate_inbound_gets_no_second_reply(client, db: Database):
    sid = seed_survey(db, state="sent")
    params = sms_params("8")
    assert "<Message>" in twiml(post(client, "/webhooks/twilio/inbound", params))
    assert "<Message>" not in twiml(post(client, "/webhooks/twilio/inbound", params))
    assert answers_of(db, sid) == [(8, None, "sms")]
    assert rows(db, InboundEvent) == 1


def test_help_and_unknown_sender(client, db: Database):
    help_reply = twiml(post(client, "/webhooks/twilio/inbound", sms_params("help")))
    assert "Reply STOP to opt out" in help_reply
    nobody = twiml(post(client, "/webhooks/twilio/inbound", sms_params("10", "+4915112345678")))
    assert "<Message>" not in nobody
    with db.session() as s:
        results = s.scalars(select(InboundEvent.result).order_by(InboundEvent.id)).all()
    assert results == ["help", "no open survey"]


def test_stop_then_nothing_more_goes_to_that_number(client, db: Database, config):
    """STOP over HTTP; then a scheduler pass, the sends and a reminder: no SMS of any kind."""
    noon = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)  # a Tuesday, 12:00 in Berlin
    only_sms = {"sms": True}
    invited = seed_survey(db, state="delivered", consent=only_sms)
    due = seed_survey(
        db,
        state="scheduled",
        due_at=noon - timedelta(minutes=5),
        config_version=config.schedule_version,
    )
    queued = seed_survey(db, state="queued", queued_at=noon - timedelta(minutes=5))
    stop = twiml(post(client, "/webhooks/twilio/inbound", sms_params("STOP")))
    assert "<Message>" not in stop  # Twilio itself confirms opt-outs
    with db.session() as s:
        revocation = s.scalar(select(ConsentRecord).where(ConsentRecord.granted.is_(False)))
        assert revocation.channel == "sms" and revocation.evidence_kind == "sms_reply"
        raw_sid = s.scalar(select(InboundEvent.external_id))
        assert revocation.evidence_ref == raw_sid

    sms_channel = ConsoleChannel(ChannelName.sms, stream=_Null())
    email_channel = ConsoleChannel(ChannelName.email, stream=_Null())
    sender = Sender(
        db.factory,
        {ChannelName.sms: sms_channel, ChannelName.email: email_channel},
        AnswerLinks("test-secret-key", BASE),
        BASE,
    )
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, noon)
    for survey_id in {*enqueued, due, queued}:
        sender.send(survey_id, config, noon)
    sender.send_reminder(invited, 0, config, noon)
    assert sms_channel.sent == []
    assert [survey_of(db, i).state for i in (invited, due, queued)] == [
        "opted_out",
        "suppressed",
        "suppressed",
    ]
    # A late reply is still stored, never lost, and gets no SMS back.
    late = twiml(post(client, "/webhooks/twilio/inbound", sms_params("9")))
    assert "<Message>" not in late


def test_start_after_stop(client, db: Database):
    sid = seed_survey(db, state="sent")
    post(client, "/webhooks/twilio/inbound", sms_params("stop"))
    post(client, "/webhooks/twilio/inbound", sms_params("START"))
    with db.session() as s:
        grants = s.scalars(
            select(ConsentRecord.granted)
            .where(ConsentRecord.channel == "sms")
            .order_by(ConsentRecord.id)
        ).all()
    assert grants == [True, False, True]
    assert survey_of(db, sid).state == "opted_out"  # the invitation stays ended


def test_survey_rows_unchanged_by_refused_requests(client, db: Database):
    seed_survey(db, state="sent")
    with db.session() as s:
        before = s.execute(select(Survey.state, Survey.score)).all()
    client.post("/webhooks/twilio/inbound", data=sms_params("9"))
    with db.session() as s:
        assert s.execute(select(Survey.state, Survey.score)).all() == before


class _Null:
    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass
