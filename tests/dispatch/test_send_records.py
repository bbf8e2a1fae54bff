"""One accepted invitation, one invitation row: however many parties settle the same send (the
worker's own provider answer, a lookup by a scheduler while that answer was still on its way, two
schedulers at once), the survey has a single ``kind="invitation"`` message row.

Real databases and channels, respx only at the Twilio HTTP boundary."""

from __future__ import annotations

from datetime import timedelta

from channels.base import ChannelName, FoundMessage
from dispatch.sending.settle import LookupSchedule, record_found
from models import Customer, Survey, SurveyState
from tests.dispatch.test_send_promises import (
    OUR_SID,
    WaitingRateLimiter,
    form,
    listed,
    messages_of,
    page,
    sender_with,
    sms_survey,
)
from tests.dispatch.test_sending import NOON, TWILIO_MESSAGES, make_sender, survey, twilio_created
from wiring.services import GIVE_UP_AFTER

S = SurveyState


def test_a_lookup_during_the_provider_call_and_the_late_answer_record_one_invitation(
    db, config, respx_mock
):
    survey_id = sms_survey(db, config)
    sender = sender_with(db, WaitingRateLimiter())
    with db.session() as s:
        row = s.get(Survey, survey_id)
        customer = s.get(Customer, row.customer_id)
        body = sender._message(row, customer, config, NOON).body_text
    respx_mock.get(TWILIO_MESSAGES).respond(200, json=page(listed(OUR_SID, body)))

    def slow_provider(request):
        # Twilio created the message but answers late; a scheduler settles the send meanwhile.
        assert sender.settle(survey_id, config, NOON + timedelta(minutes=3), GIVE_UP_AFTER) == (
            "sent (found by lookup)"
        )
        return twilio_created(OUR_SID)

    post = respx_mock.post(TWILIO_MESSAGES).mock(side_effect=slow_provider)

    sender.send(survey_id, config, NOON)

    assert post.call_count == 1
    assert survey(db, survey_id).state == S.sent
    invitations = [m for m in messages_of(db, survey_id) if m.kind == "invitation"]
    assert [(m.provider, m.provider_message_id) for m in invitations] == [("twilio", OUR_SID)]


def test_two_settlers_finding_the_same_message_record_one_invitation(db, config, respx_mock):
    survey_id = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).respond(502, text="Bad Gateway")
    sender = make_sender(db)
    assert sender.send(survey_id, config, NOON).state == "sending"
    body = form(post.calls.last.request)["Body"][0]
    respx_mock.get(TWILIO_MESSAGES).respond(200, json=page(listed(OUR_SID, body)))
    later = NOON + timedelta(minutes=5)
    assert sender.settle(survey_id, config, later, GIVE_UP_AFTER) == "sent (found by lookup)"

    # A second scheduler that read the row as `sending` before the first one committed and found
    # the same message records what it found too.
    found = FoundMessage(provider_message_id=OUR_SID, status="delivered", created_at=NOON)
    record_found(
        db.factory,
        LookupSchedule(),
        survey_id,
        ChannelName.sms,
        "twilio",
        found,
        NOON,
        config,
        later,
    )

    assert survey(db, survey_id).state == S.sent
    assert [m.kind for m in messages_of(db, survey_id)] == ["invitation"]
    assert post.call_count == 1
