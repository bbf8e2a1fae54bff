"""SendGrid email sending, mocked at the HTTP boundary with respx."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from channels.base import (
    ChannelName,
    OutboundMessage,
    OutcomeUnknownError,
    PermanentSendError,
    TransientSendError,
)
from channels.sendgrid_email.send import SendGridEmailChannel

BASE = "https://sendgrid.test"
URL = f"{BASE}/v3/mail/send"
KEY = "SG.test-key"
TO = "ana@example.com"
UNSUBSCRIBE = "https://nps.example/s/TOKEN/unsubscribe"


def make_channel(**overrides) -> SendGridEmailChannel:
    options: dict[str, Any] = {
        "from_email": "Example Shop <surveys@shop.example>",
        "unsubscribe_group_id": 1234,
        "api_base": BASE,
        "timeout": 5.0,
    }
    options.update(overrides)
    return SendGridEmailChannel(KEY, **options)


def make_message(**overrides) -> OutboundMessage:
    fields: dict[str, Any] = {
        "survey_id": 42,
        "channel": ChannelName.email,
        "to": TO,
        "subject": "How likely are you to recommend Example Shop?",
        "body_text": "Hi Ana,\n\n 0: https://nps.example/s/TOKEN?score=0\n",
        "body_html": "<p>Hi Ana,</p>",
        "unsubscribe_url": UNSUBSCRIBE,
    }
    fields.update(overrides)
    return OutboundMessage(**fields)


def test_send_posts_the_exact_json_with_bearer_auth(respx_mock):
    route = respx_mock.post(URL).respond(202, headers={"X-Message-Id": "abc123XYZ"})

    receipt = make_channel().send(make_message())

    assert receipt.provider == "sendgrid"
    assert receipt.provider_message_id == "abc123XYZ"
    assert receipt.segments is None
    request = route.calls.last.request
    assert request.url == httpx.URL(URL)
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "from": {"email": "surveys@shop.example", "name": "Example Shop"},
        "subject": "How likely are you to recommend Example Shop?",
        "personalizations": [{"to": [{"email": TO}]}],
        "content": [
            {"type": "text/plain", "value": "Hi Ana,\n\n 0: https://nps.example/s/TOKEN?score=0\n"},
            {"type": "text/html", "value": "<p>Hi Ana,</p>"},
        ],
        "custom_args": {"survey_id": "42"},
        "asm": {"group_id": 1234},
        "headers": {
            "List-Unsubscribe": f"<{UNSUBSCRIBE}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }


def test_no_personal_data_in_custom_args_or_categories(respx_mock):
    route = respx_mock.post(URL).respond(202, headers={"X-Message-Id": "id"})

    make_channel().send(make_message())

    body = json.loads(route.calls.last.request.content)
    assert body["custom_args"] == {"survey_id": "42"}
    assert "categories" not in body
    assert TO not in json.dumps(body["custom_args"])


def test_without_group_and_bare_sender(respx_mock):
    route = respx_mock.post(URL).respond(202, headers={"X-Message-Id": "id"})

    make_channel(from_email="surveys@shop.example", unsubscribe_group_id=None).send(make_message())

    body = json.loads(route.calls.last.request.content)
    assert "asm" not in body
    assert body["from"] == {"email": "surveys@shop.example"}


@pytest.mark.parametrize("to", [TO, f"CX team <{TO}>"], ids=["address", "named"])
def test_a_message_to_staff_goes_outside_the_survey_unsubscribe_group(respx_mock, to):
    """An alert to the shop's staff: unsubscribing from surveys must neither hide it nor be
    offered in it. Both ways of writing the body (direct and through the helper) agree."""
    route = respx_mock.post(URL).respond(202, headers={"X-Message-Id": "id"})

    make_channel().send(make_message(to=to, to_staff=True, unsubscribe_url=None))

    body = json.loads(route.calls.last.request.content)
    assert "asm" not in body
    assert body["personalizations"][0]["to"][0]["email"] == TO


def test_429_with_retry_after_is_transient(respx_mock):
    respx_mock.post(URL).respond(
        429,
        headers={"Retry-After": "60"},
        json={"errors": [{"message": "too many requests", "field": None}]},
    )

    with pytest.raises(TransientSendError) as caught:
        make_channel().send(make_message())

    assert caught.value.retry_after_seconds == 60
    assert caught.value.provider == "sendgrid"


def test_400_is_permanent_with_the_message_but_never_the_address(respx_mock):
    respx_mock.post(URL).respond(
        400,
        json={
            "errors": [
                {
                    "message": f"Does not contain a valid address: {TO}",
                    "field": "personalizations.0.to",
                }
            ]
        },
    )

    with pytest.raises(PermanentSendError) as caught:
        make_channel().send(make_message())

    text = str(caught.value)
    assert "Does not contain a valid address" in text
    assert "personalizations.0.to" in text
    assert TO not in text
    assert caught.value.code == "400"
    assert not caught.value.revokes_consent


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_5xx_and_408_are_outcome_unknown(respx_mock, status):
    # SendGrid (or a proxy in front of it) may have accepted the mail before failing: sending
    # again could deliver a second copy, so the outcome is unknown, never transient.
    respx_mock.post(URL).respond(status, text="unavailable")

    with pytest.raises(OutcomeUnknownError) as caught:
        make_channel().send(make_message())

    assert caught.value.code == str(status)
    assert caught.value.provider == "sendgrid"


@pytest.mark.parametrize("status", [401, 403])
def test_our_credentials_wait_instead_of_failing_the_recipient(respx_mock, status):
    respx_mock.post(URL).respond(status, json={"errors": [{"message": "forbidden"}]})

    with pytest.raises(TransientSendError) as caught:
        make_channel().send(make_message())

    assert not isinstance(caught.value, OutcomeUnknownError)


def test_2xx_without_message_id_is_accepted_without_an_id(respx_mock):
    route = respx_mock.post(URL).respond(200)  # sandbox mode

    receipt = make_channel().send(make_message())

    assert (receipt.provider, receipt.provider_message_id) == ("sendgrid", None)
    assert route.call_count == 1


@pytest.mark.parametrize("error", [httpx.ConnectTimeout, httpx.ConnectError])
def test_connect_failures_are_transient(respx_mock, error):
    respx_mock.post(URL).mock(side_effect=error)

    with pytest.raises(TransientSendError) as caught:
        make_channel().send(make_message())

    assert not isinstance(caught.value, OutcomeUnknownError)


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError, httpx.ReadError]
)
def test_failures_after_the_request_was_written_are_outcome_unknown(respx_mock, error):
    respx_mock.post(URL).mock(side_effect=error)

    with pytest.raises(OutcomeUnknownError):
        make_channel().send(make_message())


def test_sender_must_be_an_address():
    with pytest.raises(ValueError, match="SENDGRID_FROM"):
        make_channel(from_email="Example Shop")
