"""The chaos run's fake Twilio and SendGrid: the product's own clients and signature checks must
accept them, or the run would test the fake instead of the product."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from bench.fakes.faults import CREATE_FAULTS, FaultPlan
from bench.fakes.provider import FakeProvider, Message
from bench.fakes.signing import SendGridSigner, TwilioSigner
from channels.base import ChannelName, OutboundMessage
from channels.sendgrid_email.send import SendGridEmailChannel
from channels.sendgrid_email.webhooks import verify_sendgrid_signature
from channels.twilio_sms.send import TwilioSmsChannel
from channels.twilio_sms.webhooks import verify_twilio_signature

SID = "AC" + "c3" * 16
TOKEN = "fake-auth-token"
KEY = "SG.fake-key"
PHONE = "+4915112345678"
CALLBACK = "http://127.0.0.1:9/webhooks/twilio/status?survey_id=42"


class ForcedFaults(FaultPlan):
    """Every request gets the same fault (or none)."""

    def __init__(self, fault: str | None) -> None:
        super().__init__(seed=0, rate=0.0)
        self.fault = fault

    def decide(self, operation, recipient, faults):
        return self.fault


def start(fault: str | None = None, **options) -> tuple[FakeProvider, str, list[Message]]:
    created: list[Message] = []
    provider = FakeProvider(
        account_sid=SID,
        auth_token=TOKEN,
        sendgrid_key=KEY,
        faults=ForcedFaults(fault),
        client_timeout=options.pop("client_timeout", 5.0),
        on_created=created.append,
        **options,
    )
    port = provider.start()
    return provider, f"http://127.0.0.1:{port}", created


@pytest.fixture
def fake() -> Iterator[tuple[FakeProvider, str, list[Message]]]:
    provider, base, created = start()
    yield provider, base, created
    provider.stop()


def sms(survey_id: int = 42) -> OutboundMessage:
    return OutboundMessage(
        survey_id=survey_id,
        channel=ChannelName.sms,
        to=PHONE,
        body_text="How likely are you to recommend us? Reply 0-10",
        status_callback_url=CALLBACK,
    )


def email() -> OutboundMessage:
    return OutboundMessage(
        survey_id=7,
        channel=ChannelName.email,
        to="ana@mail.example",
        subject="One question",
        body_text="http://127.0.0.1:9/s/abc?score=9",
        body_html="<a href='http://127.0.0.1:9/s/abc?score=9'>9</a>",
    )


def test_the_twilio_client_sends_and_finds_through_the_fake(fake):
    provider, base, created = fake
    channel = TwilioSmsChannel(SID, TOKEN, from_number="+15005550006", api_base=base)
    receipt = channel.send(sms())
    [message] = created
    assert receipt.provider_message_id == message.id and message.id.startswith("SM")
    assert (message.to, message.survey_id, message.status_callback) == (PHONE, 42, CALLBACK)
    # The list API finds a message once it was sent to the carrier, newest first.
    provider.mark_sent(message, message.received_at)
    since = datetime.fromtimestamp(message.received_at - 60, UTC)
    listed = channel.client.messages.list(to=PHONE, date_sent_after=since, limit=50)
    assert [m.sid for m in listed] == [message.id]
    assert channel.client.messages.list(to="+4915199999999", date_sent_after=since) == []


def test_the_sendgrid_client_sends_through_the_fake(fake):
    _, base, created = fake
    receipt = SendGridEmailChannel(KEY, "Shop <s@shop.example>", api_base=base).send(email())
    [message] = created
    assert receipt.provider_message_id == message.id
    assert (message.to, message.survey_id) == ("ana@mail.example", 7)
    assert "/s/abc?score=9" in message.body


def test_wrong_credentials_are_refused(fake):
    _, base, created = fake
    with httpx.Client() as client:
        twilio = client.post(f"{base}/2010-04-01/Accounts/{SID}/Messages.json", data={"To": PHONE})
        sendgrid = client.post(f"{base}/v3/mail/send", headers={"Authorization": "Bearer no"})
    assert (twilio.status_code, sendgrid.status_code) == (401, 401)
    assert created == []


@pytest.mark.parametrize(
    ("fault", "status", "creates"),
    [
        ("429", 429, False),
        ("5xx_before_create", 500, False),
        ("5xx_after_create", 500, True),
        ("2xx_without_id", 201, True),
    ],
)
def test_each_twilio_fault_answers_as_planned(fault, status, creates):
    provider, base, created = start(fault)
    try:
        with httpx.Client(auth=(SID, TOKEN)) as client:
            reply = client.post(
                f"{base}/2010-04-01/Accounts/{SID}/Messages.json",
                data={"To": PHONE, "Body": "hi", "StatusCallback": CALLBACK},
            )
    finally:
        provider.stop()
    assert reply.status_code // 100 == status // 100
    assert bool(created) is creates
    if fault == "2xx_without_id":
        assert reply.json()["sid"] is None
    if fault == "429":
        assert reply.headers["Retry-After"] == "1" and reply.json()["code"] == 20429
    assert provider.injected == {f"twilio {fault}": 1}
    [attempt] = provider.attempts
    assert attempt.survey_id == 42 and fault in attempt.outcome


@pytest.mark.parametrize("fault", ["timeout_before_create", "timeout_after_create"])
def test_timeouts_outlast_the_client_and_may_have_created_the_mail(fault):
    provider, base, created = start(fault, client_timeout=0.3)
    try:
        with httpx.Client(timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
            client.post(
                f"{base}/v3/mail/send",
                headers={"Authorization": f"Bearer {KEY}"},
                json={"personalizations": [{"to": [{"email": "a@mail.example"}]}]},
            )
    finally:
        provider.stop()
    assert bool(created) is (fault == "timeout_after_create")


def test_sendgrid_without_id_still_creates(fake):
    provider, base, created = start("2xx_without_id")
    try:
        with httpx.Client() as client:
            reply = client.post(
                f"{base}/v3/mail/send",
                headers={"Authorization": f"Bearer {KEY}"},
                json={
                    "personalizations": [{"to": [{"email": "a@mail.example"}]}],
                    "custom_args": {"survey_id": "5"},
                },
            )
    finally:
        provider.stop()
    assert reply.status_code == 202 and "X-Message-Id" not in reply.headers
    assert [m.survey_id for m in created] == [5]


def test_refused_recipients_create_nothing():
    provider, base, created = start(None, landlines=frozenset({PHONE}))
    try:
        channel = TwilioSmsChannel(SID, TOKEN, from_number="+15005550006", api_base=base)
        with pytest.raises(Exception, match="SMS-capable"):
            channel.send(sms())
        provider.opt_out("+4915112345679")
        with pytest.raises(Exception, match="unsubscribed"):
            channel.send(
                OutboundMessage(
                    survey_id=1, channel=ChannelName.sms, to="+4915112345679", body_text="hi"
                )
            )
    finally:
        provider.stop()
    assert created == []
    assert provider.refusals == {"twilio 21614": 1, "twilio 21610": 1}


def test_the_fault_plan_is_reproducible_and_keeps_to_its_rate():
    def faults(seed: int) -> list[str | None]:
        plan = FaultPlan(seed, rate=0.15)
        return [plan.decide("send", f"r{n % 500}", CREATE_FAULTS) for n in range(5000)]

    first = faults(3)
    assert first == faults(3) and first != faults(4)
    share = sum(f is not None for f in first) / len(first)
    assert 0.10 < share < 0.16  # 15%, less the faults a streak limit of one turns away
    assert set(first) == {None, *CREATE_FAULTS}


def test_twilio_signatures_pass_the_products_check():
    params = {"MessageSid": "SM1", "MessageStatus": "delivered", "To": PHONE}
    url = "http://127.0.0.1:8000/webhooks/twilio/status?survey_id=42"
    signature = TwilioSigner(TOKEN).signature(url, params)
    assert verify_twilio_signature(TOKEN, url, params, signature)
    assert not verify_twilio_signature(TOKEN, url, {**params, "To": "+1"}, signature)
    assert not verify_twilio_signature("other-token", url, params, signature)


def test_sendgrid_signatures_pass_the_products_check():
    signer = SendGridSigner()
    body = json.dumps([{"event": "delivered", "sg_event_id": "e1", "survey_id": "42"}])
    headers = signer.headers(body)
    signature = headers["X-Twilio-Email-Event-Webhook-Signature"]
    stamp = headers["X-Twilio-Email-Event-Webhook-Timestamp"]
    now = datetime.now(UTC)
    assert verify_sendgrid_signature(signer.public_key, body.encode(), signature, stamp, now)
    assert not verify_sendgrid_signature(
        signer.public_key, body.replace("42", "43").encode(), signature, stamp, now
    )
    assert not verify_sendgrid_signature(
        SendGridSigner().public_key, body.encode(), signature, stamp, now
    )
