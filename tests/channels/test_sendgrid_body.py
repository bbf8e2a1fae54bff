"""The mail body written directly is the one ``sendgrid.helpers.mail.Mail`` builds."""

from __future__ import annotations

import json

import pytest
from sendgrid.helpers.mail.exceptions import ApiKeyIncludedException

from channels.base import ChannelName, OutboundMessage
from channels.sendgrid_email.send import _build_with_helper, build_mail

FROMS = [
    "surveys@shop.example",
    "Example Shop <surveys@shop.example>",
    '"Shop, Inc." <s@shop.example>',
]


def message(**overrides: object) -> OutboundMessage:
    fields: dict[str, object] = {
        "survey_id": 42,
        "channel": ChannelName.email,
        "to": "ana@example.com",
        "subject": "How likely are you to recommend Example Shop?",
        "body_text": "Hi Ana,\n\n 0: https://nps.example/s/TOKEN?score=0\n",
        "body_html": "<p>Hi Ana, &amp; «ü»</p>",
        "unsubscribe_url": "https://nps.example/s/TOKEN/unsubscribe",
    }
    fields.update(overrides)
    return OutboundMessage(**fields)


@pytest.mark.parametrize("sender", FROMS)
@pytest.mark.parametrize("group", [None, 1234])
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"body_html": None},
        {"unsubscribe_url": None},
        {"body_html": None, "unsubscribe_url": None},
        {"to": "Ana Example <ana@example.com>"},
        {"to": "<ana@example.com>"},
    ],
)
def test_the_body_is_the_helpers(sender, group, overrides):
    sent = message(**overrides)
    direct = build_mail(sent, sender, group)
    helper = _build_with_helper(sent, sender, group)
    assert direct == helper
    # The same JSON, key for key (SendGrid reads it; the order is kept for a stable log).
    assert json.dumps(direct) == json.dumps(helper)


def test_a_recipient_that_is_no_address_is_refused_as_by_the_helper():
    with pytest.raises(KeyError):
        _build_with_helper(message(to="not-an-address"), FROMS[0], None)
    with pytest.raises(KeyError):
        build_mail(message(to="not-an-address"), FROMS[0], None)


def test_an_api_key_in_the_content_is_refused_as_by_the_helper():
    leaking = message(body_text="SG.abcdefghij.klmnopqrst is a key")
    with pytest.raises(ApiKeyIncludedException):
        _build_with_helper(leaking, FROMS[0], None)
    with pytest.raises(ApiKeyIncludedException):
        build_mail(leaking, FROMS[0], None)


def test_a_mail_without_a_subject_is_refused():
    with pytest.raises(ValueError):
        build_mail(message(subject=""), FROMS[0], None)
