"""Provider message ids never reach the log: a Twilio SID or a SendGrid X-Message-Id leads to the
provider's copy of the message (the contact and the body), and our rows drop it when the customer
is erased, which a log line could not follow.

Real databases and channels, respx only at the Twilio and SendGrid HTTP boundary; the outcome is
read from the log records of the whole process."""

from __future__ import annotations

import logging
from datetime import timedelta

from channels.masking import mask_phone
from tests.dispatch.test_consent_order import PHONE
from tests.dispatch.test_send_promises import (
    REMINDER_AT,
    _accept_after,
    form,
    invited,
    listed,
    page,
    sms_survey,
)
from tests.dispatch.test_sending import (
    NOON,
    SENDGRID_SEND,
    TWILIO_MESSAGES,
    make_sender,
    queued_survey,
    survey,
    twilio_created,
)
from wiring.services import GIVE_UP_AFTER

SID = "SM" + "4e" * 16
MESSAGE_ID = "sg-Xq81kdlZ3rQ.filter0042p1las1"


def logged(caplog) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def test_a_twilio_send_logs_the_survey_and_provider_but_not_the_sid(db, config, respx_mock, caplog):
    survey_id = sms_survey(db, config)
    respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created(SID))

    with caplog.at_level(logging.DEBUG):
        assert make_sender(db).send(survey_id, config, NOON).state == "sent"

    assert survey(db, survey_id).provider_message_id == SID  # the row keeps it
    text = logged(caplog)
    assert f"survey {survey_id}" in text and "twilio" in text
    assert SID not in text


def test_a_sendgrid_send_logs_the_survey_and_provider_but_not_the_message_id(
    db, config, respx_mock, caplog
):
    survey_id = queued_survey(db, config)
    respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": MESSAGE_ID})

    with caplog.at_level(logging.DEBUG):
        assert make_sender(db).send(survey_id, config, NOON).state == "sent"

    assert survey(db, survey_id).provider_message_id == MESSAGE_ID
    text = logged(caplog)
    assert f"survey {survey_id}" in text and "sendgrid" in text
    assert MESSAGE_ID not in text


def test_a_send_found_by_lookup_logs_no_sid(db, config, respx_mock, caplog):
    survey_id = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).respond(502, text="Bad Gateway")
    sender = make_sender(db)
    assert sender.send(survey_id, config, NOON).state == "sending"
    body = form(post.calls.last.request)["Body"][0]
    respx_mock.get(TWILIO_MESSAGES).respond(200, json=page(listed(SID, body)))

    with caplog.at_level(logging.DEBUG):
        outcome = sender.settle(survey_id, config, NOON + timedelta(minutes=5), GIVE_UP_AFTER)

    assert outcome == "sent (found by lookup)"
    assert survey(db, survey_id).provider_message_id == SID
    text = logged(caplog)
    assert f"survey {survey_id}" in text and "twilio" in text
    assert SID not in text


def test_a_send_to_a_customer_erased_during_the_call_logs_not_even_the_masked_contact(
    db, config, respx_mock, caplog
):
    survey_id = sms_survey(db, config)
    masked_phone = mask_phone(PHONE)
    respx_mock.post(TWILIO_MESSAGES).mock(
        side_effect=_accept_after(db, config, twilio_created(SID))
    )

    with caplog.at_level(logging.DEBUG):
        assert make_sender(db).send(survey_id, config, NOON).state == "sent"

    assert survey(db, survey_id).provider_message_id is None  # erased meanwhile
    text = logged(caplog)
    assert f"survey {survey_id} sent by twilio" in text
    assert masked_phone not in text and PHONE not in text


def test_a_reminder_to_a_customer_erased_during_the_call_logs_not_even_the_masked_contact(
    db, config, respx_mock, caplog
):
    survey_id, route, sender, _limiter = invited(db, config, respx_mock, "sms")
    route.mock(side_effect=_accept_after(db, config, twilio_created(SID)))

    with caplog.at_level(logging.DEBUG):
        assert sender.send_reminder(survey_id, 0, config, REMINDER_AT) == "reminder sent"

    text = logged(caplog)
    assert f"survey {survey_id}: reminder 1 sent to an erased customer" in text
