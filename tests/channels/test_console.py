"""The console channel, masking, and building the channels from the environment."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from channels.base import Channel, ChannelName, OutboundMessage
from channels.console.send import ConsoleChannel
from channels.masking import mask_email, mask_phone, mask_text
from channels.registry import channels_from_env, enabled_channels
from channels.sendgrid_email.send import SendGridEmailChannel
from channels.twilio_sms.send import TwilioSmsChannel

# -- masking --------------------------------------------------------------------------------------


def test_mask_phone():
    assert mask_phone("+40721000111") == "+40******111"
    assert mask_phone("+15005550006") == "+15******006"
    assert mask_phone("12345") == "*****"


def test_mask_email():
    assert mask_email("ana@example.com") == "a**@example.com"
    assert mask_email("x@example.com") == "x@example.com"
    assert mask_email("not-an-address") == "***"


def test_mask_text():
    text = "The 'To' number +40721000111 is invalid; ana@example.com bounced (error 21211)"
    assert mask_text(text) == (
        "The 'To' number +40******111 is invalid; a**@example.com bounced (error 21211)"
    )


# -- console --------------------------------------------------------------------------------------


_MESSAGES: dict[ChannelName, dict[str, Any]] = {
    ChannelName.sms: {
        "survey_id": 7,
        "to": "+40721000111",
        "body_text": "Hi Ana, how likely... Reply STOP to opt out",
    },
    ChannelName.email: {
        "survey_id": 8,
        "to": "ana@example.com",
        "subject": "How likely...?",
        "body_text": "Hi Ana,\n\n 0: https://x/s/t?score=0",
    },
}


def _message(channel: ChannelName, overrides: dict[str, Any]) -> OutboundMessage:
    return OutboundMessage(channel=channel, **{**_MESSAGES[channel], **overrides})


def sms(**overrides) -> OutboundMessage:
    return _message(ChannelName.sms, overrides)


def email(**overrides) -> OutboundMessage:
    return _message(ChannelName.email, overrides)


def test_console_prints_a_masked_summary_and_the_body():
    out = io.StringIO()
    channel = ConsoleChannel(ChannelName.sms, stream=out)

    receipt = channel.send(sms())

    assert receipt.provider == "console"
    assert receipt.provider_message_id.startswith("console-")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[sms invitation] survey 7 -> +40******111"
    assert lines[1].strip() == "Hi Ana, how likely... Reply STOP to opt out"
    assert "+40721000111" not in out.getvalue()
    assert channel.sent == [sms()]


def test_console_email_shows_subject_and_masks_address():
    out = io.StringIO()
    channel = ConsoleChannel(ChannelName.email, stream=out)
    message = email(is_reminder=True)

    channel.send(message)

    text = out.getvalue()
    assert text.splitlines()[0] == "[email reminder] survey 8 -> a**@example.com | How likely...?"
    assert "ana@example.com" not in text
    assert "https://x/s/t?score=0" in text


def test_console_ids_are_unique_and_sends_are_thread_safe():
    out = io.StringIO()
    channel = ConsoleChannel(ChannelName.sms, stream=out)
    ids: list[str] = []

    def work(n: int) -> None:
        for i in range(50):
            ids.append(channel.send(sms(survey_id=n * 100 + i)).provider_message_id)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(set(ids)) == 200
    assert len(channel.sent) == 200
    assert out.getvalue().count("[sms invitation]") == 200


def test_console_defaults_to_stdout(capsys):
    ConsoleChannel(ChannelName.sms).send(sms())
    assert "+40******111" in capsys.readouterr().out


def test_console_on_stdout_masks_answer_links(capsys):
    from channels.links import AnswerLinks

    link = AnswerLinks("k" * 32, "https://nps.example.test").url_for(
        7, datetime(2030, 1, 1, tzinfo=UTC), score=9
    )
    message = email(survey_id=7, subject="How did we do?", body_text=f"Rate us: {link}")
    ConsoleChannel(ChannelName.email).send(message)
    printed = capsys.readouterr().out
    token = link.split("/s/")[1].split("?")[0]
    assert token not in printed and "/s/[token]" in printed


# -- registry -------------------------------------------------------------------------------------

TWILIO = {"TWILIO_ACCOUNT_SID": "AC" + "1" * 32, "TWILIO_AUTH_TOKEN": "token"}
SENDGRID = {"SENDGRID_API_KEY": "SG.key", "SENDGRID_FROM": "Shop <surveys@shop.example>"}


def test_no_providers_means_console_for_both():
    channels = channels_from_env({})
    assert set(channels) == {ChannelName.sms, ChannelName.email}
    for name, channel in channels.items():
        assert isinstance(channel, ConsoleChannel)
        assert channel.name == name
        assert channel.provider == "console"


@pytest.mark.parametrize(
    "sender", [{"TWILIO_FROM": "+15005550006"}, {"TWILIO_MESSAGING_SERVICE_SID": "MG" + "2" * 32}]
)
def test_twilio_on_with_sid_token_and_a_sender(sender):
    channels = channels_from_env({**TWILIO, **sender})
    sms_channel = channels[ChannelName.sms]
    assert isinstance(sms_channel, TwilioSmsChannel)
    assert sms_channel.http_client.api_base == "https://api.twilio.com"
    # One provider configured: the other channel is off, never silently a console in production.
    assert ChannelName.email not in channels
    assert enabled_channels({**TWILIO, **sender}) == {"sms"}


@pytest.mark.parametrize(
    "env",
    [
        {"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_FROM": "+15005550006"},
        {"TWILIO_AUTH_TOKEN": "t", "TWILIO_FROM": "+15005550006"},
        TWILIO,
        {**TWILIO, "TWILIO_FROM": "  "},
    ],
)
def test_twilio_incomplete_falls_back_to_console(env):
    assert isinstance(channels_from_env(env)[ChannelName.sms], ConsoleChannel)
    assert enabled_channels(env) == {"sms", "email"}


def test_sendgrid_on_with_key_and_sender():
    channels = channels_from_env({**SENDGRID, "SENDGRID_UNSUBSCRIBE_GROUP_ID": "99"})
    email_channel = channels[ChannelName.email]
    assert isinstance(email_channel, SendGridEmailChannel)
    assert email_channel.unsubscribe_group_id == 99
    assert email_channel.url == "https://api.sendgrid.com/v3/mail/send"
    assert ChannelName.sms not in channels


@pytest.mark.parametrize("env", [{"SENDGRID_API_KEY": "k"}, {"SENDGRID_FROM": "a@b.example"}])
def test_sendgrid_incomplete_falls_back_to_console(env):
    assert isinstance(channels_from_env(env)[ChannelName.email], ConsoleChannel)


def test_both_providers_with_custom_bases():
    channels = channels_from_env(
        {
            **TWILIO,
            **SENDGRID,
            "TWILIO_FROM": "+15005550006",
            "TWILIO_API_BASE": "http://localhost:4010/",
            "SENDGRID_API_BASE": "http://localhost:4011",
        }
    )
    sms_channel = channels[ChannelName.sms]
    email_channel = channels[ChannelName.email]
    assert isinstance(sms_channel, TwilioSmsChannel)
    assert isinstance(email_channel, SendGridEmailChannel)
    assert sms_channel.http_client.api_base == "http://localhost:4010"
    assert email_channel.url == "http://localhost:4011/v3/mail/send"
    assert email_channel.unsubscribe_group_id is None


def test_bad_group_id_is_refused():
    with pytest.raises(ValueError, match="SENDGRID_UNSUBSCRIBE_GROUP_ID"):
        channels_from_env({**SENDGRID, "SENDGRID_UNSUBSCRIBE_GROUP_ID": "abc"})


def test_channels_satisfy_the_protocol():
    def accepts(channel: Channel) -> str:
        return channel.provider

    channels = channels_from_env({**TWILIO, **SENDGRID, "TWILIO_FROM": "+15005550006"})
    assert sorted(accepts(c) for c in channels.values()) == ["sendgrid", "twilio"]


def test_the_console_prints_a_staff_alert_as_an_alert():
    """An alert to staff is printed as an alert, not as a survey invitation."""
    out = io.StringIO()
    alert = email(
        survey_id=0,
        to="cx@shop.example",
        subject="Detractor: 2/10 on order 1",
        body_text="x",
        to_staff=True,
    )
    ConsoleChannel(ChannelName.email, out).send(alert)
    assert out.getvalue().splitlines()[0].startswith("[email alert] survey 0 -> ")
