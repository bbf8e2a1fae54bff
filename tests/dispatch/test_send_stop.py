"""A STOP reply to an SMS invitation whose send is not recorded yet: the provider call made (the
row in ``sending`` with its marker) or its outcome unknown (``send_unknown``). The STOP answers
that message, so the invitation ends ``opted_out``; the sender's late answer neither moves it back
nor schedules a reminder, and closing the window leaves it ``opted_out``. A STOP that arrives
before the provider call is the sender's own consent re-check: no message goes out.

Real databases and channels, respx only at the Twilio HTTP boundary; the STOP goes through the
real webhook ingestion."""

from __future__ import annotations

from datetime import timedelta

from channels.twilio_sms.webhooks import raw_twilio_inbound
from dispatch import responses
from dispatch.scheduler import Scheduler
from models import SurveyState
from tests.dispatch.test_send_promises import (
    AFTER_WINDOW,
    FROM,
    PHONE,
    WaitingRateLimiter,
    messages_of,
    sender_with,
    sms_survey,
)
from tests.dispatch.test_sending import NOON, TWILIO_MESSAGES, make_sender, survey, twilio_created
from wiring.services import GIVE_UP_AFTER

S = SurveyState
SID = "SM" + "5" * 32


def stop(db, config, now) -> object:
    raw = raw_twilio_inbound(
        {"MessageSid": "SMin" + "2" * 30, "From": PHONE, "To": FROM, "Body": "STOP"}
    )
    return responses.ingest_webhooks(db.factory, config, [raw], now=now)


def after_the_window(db, config, sender) -> list[int]:
    """A scheduler pass once every reminder would be due and the response window has closed."""
    reminders: list[tuple[int, int]] = []
    Scheduler(
        db.factory,
        lambda _sid: None,
        enqueue_reminder=lambda sid, sent: reminders.append((sid, sent)),
        settle=lambda sid, now: sender.settle(sid, config, now, GIVE_UP_AFTER),
    ).tick(config, NOON + config.survey.response_window + timedelta(days=1))
    return [sid for sid, _ in reminders]


def test_a_stop_during_the_provider_call_ends_the_invitation_opted_out(db, config, respx_mock):
    survey_id = sms_survey(db, config)
    sender = make_sender(db)

    def provider(request):
        # The message reached the phone and the customer answered STOP before our commit.
        stop(db, config, NOON + timedelta(seconds=1))
        return twilio_created(SID)

    post = respx_mock.post(TWILIO_MESSAGES).mock(side_effect=provider)

    sender.send(survey_id, config, NOON)

    row = survey(db, survey_id)
    assert post.call_count == 1
    assert row.state == S.opted_out and row.final_reason == "sms opt-out (STOP reply)"
    assert row.next_reminder_at is None
    assert [m.kind for m in messages_of(db, survey_id)] == ["invitation"]
    assert after_the_window(db, config, sender) == []  # no reminder
    assert survey(db, survey_id).state == S.opted_out  # not `no_response`


def test_a_stop_while_the_outcome_is_unconfirmed_ends_the_invitation_opted_out(
    db, config, respx_mock
):
    survey_id = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).respond(500, json={"code": 20500, "message": "x"})
    sender = make_sender(db)
    assert sender.send(survey_id, config, NOON).state == "sending"

    stop(db, config, NOON + timedelta(minutes=1))

    assert survey(db, survey_id).state == S.opted_out
    assert sender.settle(survey_id, config, AFTER_WINDOW, GIVE_UP_AFTER) == "settled already"
    assert after_the_window(db, config, sender) == []
    assert survey(db, survey_id).state == S.opted_out
    assert post.call_count == 1


def test_a_stop_after_the_send_ended_unknown_ends_it_opted_out(db, config, respx_mock):
    survey_id = sms_survey(db, config)
    respx_mock.post(TWILIO_MESSAGES).respond(500, json={"code": 20500, "message": "x"})
    respx_mock.get(TWILIO_MESSAGES).respond(200, json={"messages": [], "next_page_uri": None})
    sender = make_sender(db)
    assert sender.send(survey_id, config, NOON).state == "sending"
    assert sender.settle(survey_id, config, AFTER_WINDOW, GIVE_UP_AFTER) == "send_unknown"

    stop(db, config, AFTER_WINDOW + timedelta(minutes=1))

    row = survey(db, survey_id)
    assert row.state == S.opted_out and row.final_reason == "sms opt-out (STOP reply)"


def test_a_stop_before_the_provider_call_sends_nothing(db, config, respx_mock):
    # Claimed, waiting for its rate-limit slot (no marker yet): the sender's re-check after the
    # wait sees the revocation; with no other consented channel it ends `suppressed`.
    survey_id = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created(SID))
    limiter = WaitingRateLimiter()
    sender = sender_with(db, limiter)
    limiter.during_wait = lambda: stop(db, config, NOON)

    outcome = sender.send(survey_id, config, NOON)

    assert post.call_count == 0
    assert outcome.state == S.suppressed
    assert survey(db, survey_id).state == S.suppressed
    assert messages_of(db, survey_id) == []
