"""Twilio SMS sending, mocked at the HTTP boundary with respx."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from channels.base import (
    ChannelName,
    FoundMessage,
    OutboundMessage,
    OutcomeUnknownError,
    PermanentSendError,
    TransientSendError,
)
from channels.console.send import ConsoleChannel
from channels.http import parse_retry_after
from channels.reconcile import message_lookup, status_callback_url
from channels.twilio_sms.http import HttpxTwilioClient
from channels.twilio_sms.send import TwilioSmsChannel, sms_segments

BASE = "https://twilio.test"
SID = "AC" + "a1" * 16
TOKEN = "secret-token"
FROM = "+15005550006"
SERVICE = "MG" + "b2" * 16
URL = f"{BASE}/2010-04-01/Accounts/{SID}/Messages.json"
TO = "+40721000111"
CALLBACK = "https://nps.example/webhooks/twilio/status?survey_id=42"
BODY = "Hi Ana, how likely are you to recommend Shop to a friend? Reply 0-10. Reply STOP to opt out"


def make_channel(**overrides) -> TwilioSmsChannel:
    options: dict[str, Any] = {"from_number": FROM, "api_base": BASE, "timeout": 5.0}
    options.update(overrides)
    return TwilioSmsChannel(SID, TOKEN, **options)


def make_message(**overrides) -> OutboundMessage:
    fields: dict[str, Any] = {
        "survey_id": 42,
        "channel": ChannelName.sms,
        "to": TO,
        "body_text": BODY,
        "status_callback_url": CALLBACK,
    }
    fields.update(overrides)
    return OutboundMessage(**fields)


def created(sid: str = "SM" + "c3" * 16) -> dict[str, object]:
    return {
        "sid": sid,
        "account_sid": SID,
        "to": TO,
        "from": FROM,
        "body": BODY,
        "status": "queued",
        "num_segments": "1",
        "date_created": "Fri, 20 Nov 2026 10:04:00 +0000",
        "uri": f"/2010-04-01/Accounts/{SID}/Messages/{sid}.json",
    }


def twilio_error(code: int, message: str, status: int = 400) -> dict[str, object]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def form(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode(), keep_blank_values=True)


# -- the request ----------------------------------------------------------------------------------


def test_send_posts_the_exact_form_under_the_custom_base(respx_mock):
    route = respx_mock.post(URL).respond(201, json=created())

    receipt = make_channel().send(make_message())

    assert receipt.provider == "twilio"
    assert receipt.provider_message_id == "SM" + "c3" * 16
    assert receipt.segments == 1
    request = route.calls.last.request
    assert request.url == httpx.URL(URL)
    assert form(request) == {
        "To": [TO],
        "From": [FROM],
        "Body": [BODY],
        "StatusCallback": [CALLBACK],
    }
    expected = base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_send_with_a_messaging_service_sends_no_from(respx_mock):
    route = respx_mock.post(URL).respond(201, json=created())

    make_channel(from_number=None, messaging_service_sid=SERVICE).send(
        make_message(status_callback_url=None)
    )

    assert form(route.calls.last.request) == {
        "To": [TO],
        "MessagingServiceSid": [SERVICE],
        "Body": [BODY],
    }


def test_receipt_counts_segments_of_a_long_unicode_body(respx_mock):
    respx_mock.post(URL).respond(201, json=created())
    body = "Bună ziua, cât de probabil este să recomandați magazinul nostru unui prieten?"

    receipt = make_channel().send(make_message(body_text=body))

    assert receipt.segments == 2  # UCS-2: 77 units > 70


def test_default_base_is_twilio_and_is_not_rewritten():
    client = HttpxTwilioClient()
    uri = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"
    assert client.rewrite(uri) == uri
    custom = HttpxTwilioClient(api_base="http://localhost:4010/")
    assert custom.rewrite(uri) == f"http://localhost:4010/2010-04-01/Accounts/{SID}/Messages.json"
    assert custom.rewrite("https://api.twilio.community/x") == "https://api.twilio.community/x"


def test_needs_a_sender():
    with pytest.raises(ValueError, match="From number or a Messaging Service"):
        TwilioSmsChannel(SID, TOKEN, api_base=BASE)


# -- error classification -------------------------------------------------------------------------


def test_429_with_retry_after_is_transient(respx_mock):
    respx_mock.post(URL).respond(
        429, headers={"Retry-After": "30"}, json=twilio_error(20429, "Too Many Requests", 429)
    )

    with pytest.raises(TransientSendError) as caught:
        make_channel().send(make_message())

    assert caught.value.retry_after_seconds == 30
    assert caught.value.provider == "twilio"


@pytest.mark.parametrize("code", [21211, 21614, 21635])
def test_recipient_errors_are_permanent(respx_mock, code):
    respx_mock.post(URL).respond(
        400, json=twilio_error(code, f"The 'To' number {TO} is not a valid phone number.")
    )

    with pytest.raises(PermanentSendError) as caught:
        make_channel().send(make_message())

    assert caught.value.code == str(code)
    assert caught.value.revokes_consent is False
    assert TO not in str(caught.value)  # the recipient's number is masked
    assert "+40******111" in str(caught.value)


def test_21610_unsubscribed_revokes_consent(respx_mock):
    respx_mock.post(URL).respond(
        400, json=twilio_error(21610, "Attempt to send to unsubscribed recipient")
    )

    with pytest.raises(PermanentSendError) as caught:
        make_channel().send(make_message())

    assert caught.value.code == "21610"
    assert caught.value.revokes_consent is True


def test_21611_full_sender_queue_is_transient(respx_mock):
    # Nothing was created: Twilio refused the message because the sender's queue is full.
    route = respx_mock.post(URL).respond(
        400,
        json=twilio_error(
            21611, "This 'From' number has exceeded the maximum number of queued messages"
        ),
    )

    with pytest.raises(TransientSendError) as caught:
        make_channel().send(make_message())

    assert caught.value.code == "21611"
    assert caught.value.provider == "twilio"
    assert route.call_count == 1


def test_other_4xx_is_permanent(respx_mock):
    respx_mock.post(URL).respond(400, json=twilio_error(21602, "Message body is required."))

    with pytest.raises(PermanentSendError) as caught:
        make_channel().send(make_message())

    assert caught.value.code == "21602"
    assert not caught.value.revokes_consent


def test_bad_credentials_wait_instead_of_failing_the_recipient(respx_mock):
    respx_mock.post(URL).respond(401, json=twilio_error(20003, "Authenticate", 401))

    with pytest.raises(TransientSendError):
        make_channel().send(make_message())


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_5xx_and_408_are_outcome_unknown(respx_mock, status):
    # Twilio (or a proxy in front of it) may have created the message before failing, and its
    # create has no idempotency key: sending again could deliver a second copy.
    respx_mock.post(URL).respond(status, json=twilio_error(20500, "Internal Server Error", status))

    with pytest.raises(OutcomeUnknownError) as caught:
        make_channel().send(make_message())

    assert caught.value.provider == "twilio"


def test_503_without_json_is_outcome_unknown(respx_mock):
    respx_mock.post(URL).respond(503, text="<html>Service Unavailable</html>")

    with pytest.raises(OutcomeUnknownError):
        make_channel().send(make_message())


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(201, json={"status": "queued", "num_segments": "1"}),
        httpx.Response(201, text=""),
        httpx.Response(200, text="<html>Created</html>"),
    ],
    ids=["no sid", "empty body", "not JSON"],
)
def test_success_without_a_readable_sid_is_outcome_unknown(respx_mock, answer):
    respx_mock.post(URL).mock(return_value=answer)

    with pytest.raises(OutcomeUnknownError) as caught:
        make_channel().send(make_message())

    assert f"HTTP {answer.status_code}" in str(caught.value)


def problem(status: int, code: int, title: str) -> dict[str, object]:
    """Twilio's RFC 9457 problem document (raised as TwilioServiceException by the client)."""
    return {
        "type": f"https://www.twilio.com/docs/errors/{code}",
        "title": title,
        "status": status,
        "code": code,
        "detail": f"The 'To' number {TO} is not valid.",
    }


def test_problem_documents_are_classified_like_legacy_errors(respx_mock):
    route = respx_mock.post(URL)
    route.respond(400, json=problem(400, 21211, "Invalid 'To' Phone Number"))
    with pytest.raises(PermanentSendError) as permanent:
        make_channel().send(make_message())
    assert permanent.value.code == "21211"
    assert TO not in str(permanent.value)

    route.respond(429, headers={"Retry-After": "7"}, json=problem(429, 20429, "Too Many"))
    with pytest.raises(TransientSendError) as transient:
        make_channel().send(make_message())
    assert transient.value.retry_after_seconds == 7
    assert not isinstance(transient.value, OutcomeUnknownError)

    route.respond(503, json=problem(503, 20503, "Service Unavailable"))
    with pytest.raises(OutcomeUnknownError):
        make_channel().send(make_message())


@pytest.mark.parametrize("error", [httpx.ConnectTimeout, httpx.ConnectError])
def test_connect_failures_are_transient(respx_mock, error):
    respx_mock.post(URL).mock(side_effect=error)

    with pytest.raises(TransientSendError) as caught:
        make_channel().send(make_message())

    assert not isinstance(caught.value, OutcomeUnknownError)


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError, httpx.ReadError]
)
def test_failures_after_sending_are_outcome_unknown(respx_mock, error):
    respx_mock.post(URL).mock(side_effect=error)

    with pytest.raises(OutcomeUnknownError):
        make_channel().send(make_message())


def test_retry_after_forms():
    now = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Fri, 20 Nov 2026 10:01:30 GMT", now) == 90
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# -- reconciliation lookup ------------------------------------------------------------------------

SINCE = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def listed(sid: str, **overrides: object) -> dict[str, object]:
    """A list entry: by default our message (same recipient, sender and body, after SINCE)."""
    return {
        **created(sid),
        "status": "delivered",
        "direction": "outbound-api",
        "messaging_service_sid": None,
        **overrides,
    }


def page(*messages: dict[str, object]) -> dict[str, object]:
    return {
        "messages": list(messages),
        "end": len(messages) - 1,
        "first_page_uri": "/x",
        "next_page_uri": None,
        "page": 0,
        "page_size": 50,
        "previous_page_uri": None,
        "start": 0,
        "uri": "/x",
    }


def test_find_sent_messages_asks_by_recipient_sender_and_time_and_matches_the_body(respx_mock):
    route = respx_mock.get(URL).respond(
        200,
        json=page(
            listed("SM2", date_created="Fri, 20 Nov 2026 10:06:00 +0000"),
            listed("SMother", body="Your parcel is on its way"),
            listed("SMprefix", body=BODY[:-1]),
            listed("SMfrom", **{"from": "+15005550009"}),
            listed("SMto", to="+40721000999"),
            listed("SMin", direction="inbound"),
            listed("SMearly", date_created="Fri, 20 Nov 2026 09:59:59 +0000"),
            listed("SM1"),
        ),
    )

    found = make_channel().find_sent_messages(make_message(), SINCE)

    assert found == [
        FoundMessage("SM1", "delivered", datetime(2026, 11, 20, 10, 4, tzinfo=UTC)),
        FoundMessage("SM2", "delivered", datetime(2026, 11, 20, 10, 6, tzinfo=UTC)),
    ]
    params = route.calls.last.request.url.params
    assert (params["To"], params["From"]) == (TO, FROM)
    assert params["DateSent>"] == "2026-11-20T10:00:00Z"
    assert "Body" not in params


def test_find_sent_messages_through_a_messaging_service_matches_the_service(respx_mock):
    route = respx_mock.get(URL).respond(
        200,
        json=page(
            listed("SMours", messaging_service_sid=SERVICE, **{"from": "+15005550001"}),
            listed("SMtheirs", messaging_service_sid="MG" + "00" * 16),
            listed("SMnone"),
        ),
    )

    found = make_channel(from_number=None, messaging_service_sid=SERVICE).find_sent_messages(
        make_message(), SINCE
    )

    assert [hit.provider_message_id for hit in found] == ["SMours"]
    assert "From" not in route.calls.last.request.url.params  # the pool picks the number


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(503, text="<html><h1>Service Unavailable</h1></html>"),
        httpx.Response(500, json=twilio_error(20500, "Internal Server Error", 500)),
        httpx.Response(200, text="<html>maintenance</html>"),
        httpx.Response(401, json=twilio_error(20003, "Authenticate", 401)),
    ],
    ids=["503 HTML", "500 JSON", "200 not JSON", "401"],
)
def test_a_failed_lookup_is_one_transient_error(respx_mock, answer):
    respx_mock.get(URL).mock(return_value=answer)

    with pytest.raises(TransientSendError) as caught:
        make_channel().find_sent_messages(make_message(), SINCE)

    assert f"HTTP {answer.status_code}" in str(caught.value)
    assert TO not in str(caught.value)


@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.ReadTimeout])
def test_a_lookup_transport_error_is_transient(respx_mock, error):
    respx_mock.get(URL).mock(side_effect=error)

    with pytest.raises(TransientSendError):
        make_channel().find_sent_messages(make_message(), SINCE)


# -- the evidence it offers to settle a send -------------------------------------------------------


def test_the_channel_names_its_own_status_callback_address():
    channel = make_channel()
    assert status_callback_url(channel, "https://nps.example/", 42) == CALLBACK
    assert status_callback_url(channel, "https://nps.example", 42) == CALLBACK
    assert message_lookup(channel) is channel


def test_the_console_offers_no_evidence():
    console = ConsoleChannel(ChannelName.sms)
    assert status_callback_url(console, "https://nps.example", 42) is None
    assert message_lookup(console) is None


# -- segments -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "segments"), [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)]
)
def test_gsm7_segment_boundaries(length, segments):
    assert sms_segments("a" * length) == segments


def test_gsm7_accented_letters_of_the_basic_alphabet_stay_gsm7():
    assert sms_segments("é" * 160) == 1
    assert sms_segments("äöüßÄÖÜ" * 20 + "à" * 20) == 1


def test_extension_characters_count_double():
    assert sms_segments("€" * 80) == 1
    assert sms_segments("€" * 81) == 2
    assert sms_segments("a" * 159 + "[") == 2
    # An escape pair is never split across segments.
    assert sms_segments("a" * 152 + "{" + "a" * 152) == 3


@pytest.mark.parametrize(
    ("text", "segments"),
    [("ă" * 70, 1), ("ă" * 71, 2), ("ă" * 134, 2), ("ă" * 135, 3), ("a" * 159 + "ç", 3)],
)
def test_ucs2_segment_boundaries(text, segments):
    assert sms_segments(text) == segments


def test_emoji_take_two_ucs2_units():
    assert sms_segments("😀" * 35) == 1
    assert sms_segments("😀" * 36) == 2
