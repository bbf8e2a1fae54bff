"""Which consent record counts: the latest by when it took effect, capped by when we learnt it.

A shop's clock may run ahead (events are accepted up to a day in the future). Its grant must not
outrank a STOP or an unsubscribe that we stamp with our own clock after it; and a revocation
outranks a grant of the same moment.
"""

from __future__ import annotations

from datetime import timedelta

from channels.twilio_sms.webhooks import raw_twilio_inbound
from dispatch import responses
from models import Customer
from models.customers import latest_consent
from tests.dispatch.test_sending import (
    NOON,
    TWILIO_ENV,
    TWILIO_MESSAGES,
    make_sender,
    queued_survey,
    survey,
    twilio_created,
)

PHONE = "+40721000111"


def test_a_future_dated_shop_grant_does_not_outrank_a_later_stop(db, config, respx_mock):
    ahead = (NOON + timedelta(hours=20)).isoformat()
    survey_id = queued_survey(
        db, config, consent={"sms": True, "source": "checkout", "captured_at": ahead}
    )
    stop = raw_twilio_inbound(
        {
            "MessageSid": "SM" + "5" * 32,
            "From": PHONE,
            "To": TWILIO_ENV["TWILIO_FROM"],
            "Body": "STOP",
        }
    )
    responses.ingest_webhooks(db.factory, config, [stop], now=NOON + timedelta(minutes=1))
    post = respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created())

    make_sender(db).send(survey_id, config, NOON + timedelta(minutes=2))

    assert post.call_count == 0  # nothing sent after STOP
    assert survey(db, survey_id).state in ("suppressed", "withdrawn", "failed")
    with db.session() as s:
        customer = s.query(Customer).one()
        assert latest_consent(s, customer.id, "sms") is False


def test_a_revocation_outranks_a_grant_of_the_same_moment(db, config):
    from models.customers import record_consent

    with db.session() as s, s.begin():
        customer = Customer(external_id="c-tie", email_status="missing", phone_status="missing")
        s.add(customer)
        s.flush()
        for granted in (False, True):  # the grant recorded last, at the very same moment
            record_consent(
                s,
                customer,
                {"email": granted},
                source="test",
                text_version=None,
                captured_at=NOON,
                evidence_kind="event",
                evidence_ref=None,
                recorded_at=NOON,
            )
        assert latest_consent(s, customer.id, "email") is False
