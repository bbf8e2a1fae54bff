"""Twilio webhooks: real RequestValidator signatures, status and inbound parsing, TwiML."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from twilio.request_validator import RequestValidator

from channels.base import DeliveryEventKind
from channels.twilio_sms.webhooks import (
    SMS_RANK,
    InboundSms,
    advances,
    parse_inbound,
    parse_status_callback,
    public_url,
    survey_id_from_query,
    twiml_message,
    verify_twilio_signature,
)
from channels.webhook_errors import WebhookPayloadError

TOKEN = "12345678901234567890123456789012"
BASE = "https://nps.example"
URL = f"{BASE}/webhooks/twilio/status?survey_id=42"
SID = "SM" + "0f" * 16
ACCOUNT = "AC" + "a1" * 16

STATUS_PARAMS = {
    "AccountSid": ACCOUNT,
    "ApiVersion": "2010-04-01",
    "From": "+15005550006",
    "MessageSid": SID,
    "MessageStatus": "delivered",
    "RawDlrDoneDate": "2405141233",
    "SmsSid": SID,
    "SmsStatus": "delivered",
    "To": "+40721000111",
}


def sign(params, url: str = URL, token: str = TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params))


# --- public_url ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "path", "query", "expected"),
    [
        (BASE, "/webhooks/twilio/status", "survey_id=42", URL),
        (BASE + "/", "/webhooks/twilio/status", "survey_id=42", URL),
        (BASE, "/webhooks/twilio/inbound", "", f"{BASE}/webhooks/twilio/inbound"),
        (BASE, "webhooks/twilio/inbound", "", f"{BASE}/webhooks/twilio/inbound"),
        (
            "https://x.example/nps",
            "/webhooks/a",
            "b=1&c=%20",
            "https://x.example/nps/webhooks/a?b=1&c=%20",
        ),
    ],
)
def test_public_url_joins_exactly(base, path, query, expected):
    assert public_url(base, path, query) == expected


# --- signatures ---------------------------------------------------------------------------------


def test_valid_signature_passes():
    assert verify_twilio_signature(TOKEN, URL, STATUS_PARAMS, sign(STATUS_PARAMS))


def test_valid_signature_with_pairs_and_repeated_names():
    pairs = [("Body", "hi"), ("MediaUrl", "b"), ("MediaUrl", "a"), ("From", "+1")]

    class Multi(dict):  # a multi-dict as RequestValidator reads one (getall)
        def getall(self, name):
            return [v for k, v in pairs if k == name]

    signature = sign(Multi(pairs))
    assert verify_twilio_signature(TOKEN, URL, pairs, signature)
    # A plain dict keeps only one MediaUrl: it signs something else.
    assert not verify_twilio_signature(TOKEN, URL, dict(pairs), signature)


def test_starlette_like_multi_items_are_used():
    pairs = [("A", "1"), ("A", "2")]

    class FormData(dict):
        def multi_items(self):
            return list(pairs)

    class Multi(dict):
        def getall(self, name):
            return [v for k, v in pairs if k == name]

    assert verify_twilio_signature(TOKEN, URL, FormData(pairs), sign(Multi(pairs)))


def test_url_with_default_port_also_passes():
    # RequestValidator accepts the URL with or without the scheme's default port.
    signature = sign(
        STATUS_PARAMS, url="https://nps.example:443/webhooks/twilio/status?survey_id=42"
    )
    assert verify_twilio_signature(TOKEN, URL, STATUS_PARAMS, signature)


def test_empty_params_are_signed_too():
    assert verify_twilio_signature(TOKEN, URL, {}, sign({}))


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param({**STATUS_PARAMS, "MessageStatus": "failed"}, id="param-changed"),
        pytest.param({**STATUS_PARAMS, "Extra": "x"}, id="param-added"),
        pytest.param({k: v for k, v in STATUS_PARAMS.items() if k != "To"}, id="param-removed"),
    ],
)
def test_forged_params_fail(forged):
    assert not verify_twilio_signature(TOKEN, URL, forged, sign(STATUS_PARAMS))


def test_one_character_of_signature_changed_fails():
    signature = sign(STATUS_PARAMS)
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert not verify_twilio_signature(TOKEN, URL, STATUS_PARAMS, flipped)


def test_other_token_fails():
    signature = sign(STATUS_PARAMS, token="another-token-another-token-0000")
    assert not verify_twilio_signature(TOKEN, URL, STATUS_PARAMS, signature)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://nps.example/webhooks/twilio/status?survey_id=42", id="http"),
        pytest.param("https://evil.example/webhooks/twilio/status?survey_id=42", id="other-host"),
        pytest.param("https://nps.example/webhooks/twilio/status", id="missing-query"),
        pytest.param("https://nps.example/webhooks/twilio/status?survey_id=43", id="other-query"),
        pytest.param("https://nps.example/webhooks/twilio/inbound?survey_id=42", id="other-path"),
    ],
)
def test_wrong_url_fails(url):
    assert not verify_twilio_signature(TOKEN, url, STATUS_PARAMS, sign(STATUS_PARAMS))


@pytest.mark.parametrize("signature", [None, ""])
def test_missing_signature_fails(signature):
    assert not verify_twilio_signature(TOKEN, URL, STATUS_PARAMS, signature)


def test_empty_token_fails_even_with_a_matching_signature():
    # An unset auth token must not turn into "HMAC with the empty key".
    signature = RequestValidator("").compute_signature(URL, STATUS_PARAMS)
    assert not verify_twilio_signature("", URL, STATUS_PARAMS, signature)


def test_garbage_signature_fails():
    assert not verify_twilio_signature(TOKEN, URL, STATUS_PARAMS, "not base64 ☃")


# --- status callbacks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_code", "kind", "permanent"),
    [
        ("accepted", "", DeliveryEventKind.queued, True),
        ("scheduled", "", DeliveryEventKind.queued, True),
        ("queued", "", DeliveryEventKind.queued, True),
        ("sending", "", DeliveryEventKind.queued, True),
        ("sent", "", DeliveryEventKind.sent, True),
        ("delivered", "", DeliveryEventKind.delivered, True),
        ("read", "", DeliveryEventKind.delivered, True),
        ("undelivered", "30005", DeliveryEventKind.undeliverable, True),
        ("undelivered", "30006", DeliveryEventKind.undeliverable, True),
        ("undelivered", "30004", DeliveryEventKind.undeliverable, True),
        ("undelivered", "30003", DeliveryEventKind.undeliverable, False),
        ("undelivered", "30007", DeliveryEventKind.undeliverable, False),
        ("failed", "30008", DeliveryEventKind.undeliverable, False),
        ("failed", "39999", DeliveryEventKind.undeliverable, False),
        ("failed", "", DeliveryEventKind.undeliverable, False),
        ("canceled", "", DeliveryEventKind.undeliverable, False),
        ("partially_delivered", "", DeliveryEventKind.unknown, True),
        ("brand_new_status", "", DeliveryEventKind.unknown, True),
    ],
)
def test_status_mapping(status, error_code, kind, permanent):
    params = {**STATUS_PARAMS, "MessageStatus": status, "SmsStatus": status}
    if error_code:
        params["ErrorCode"] = error_code
    event = parse_status_callback(params, 42)
    assert event.kind is kind
    assert event.permanent is permanent
    assert event.error_code == (error_code or None)
    assert event.event_id == f"{SID}:{status}"


def test_status_event_fields():
    received = datetime(2024, 5, 14, 12, 34, tzinfo=UTC)
    params = {**STATUS_PARAMS, "ErrorCode": "", "SomethingNew": "x"}
    event = parse_status_callback(params, 42, received_at=received)
    assert event.provider == "twilio"
    assert event.survey_id == 42
    assert event.provider_message_id == SID
    assert event.occurred_at == received
    assert event.error_code is None  # an empty ErrorCode is no error
    assert event.raw == params


def test_same_state_twice_has_same_event_id_other_state_differs():
    a = parse_status_callback(STATUS_PARAMS, 42)
    b = parse_status_callback(dict(STATUS_PARAMS), 42)
    c = parse_status_callback({**STATUS_PARAMS, "MessageStatus": "sent"}, 42)
    assert a.event_id == b.event_id != c.event_id


def test_status_callback_without_survey_id():
    assert parse_status_callback(STATUS_PARAMS, None).survey_id is None


def test_status_is_case_insensitive_and_sms_fallback_names_work():
    params = {"SmsSid": SID, "SmsStatus": "Delivered"}
    event = parse_status_callback(params, 1)
    assert event.kind is DeliveryEventKind.delivered
    assert event.event_id == f"{SID}:delivered"


@pytest.mark.parametrize(
    "params",
    [{}, {"MessageSid": SID}, {"MessageStatus": "sent"}, {"MessageSid": " ", "MessageStatus": "x"}],
)
def test_status_callback_without_sid_or_status_raises(params):
    with pytest.raises(WebhookPayloadError) as excinfo:
        parse_status_callback(params, 1)
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("survey_id=42", 42),
        ("a=1&survey_id=7", 7),
        ("", None),
        ("survey_id=", None),
        ("survey_id=abc", None),
        ("survey_id=-3", None),
        ("survey_id=0", None),
        ("survey_id=1&survey_id=2", None),
        ("survey_id=4.2", None),
    ],
)
def test_survey_id_from_query(query, expected):
    assert survey_id_from_query(query) == expected


# --- rank ---------------------------------------------------------------------------------------


def test_rank_order():
    k = DeliveryEventKind
    assert SMS_RANK[k.queued] < SMS_RANK[k.sent] < SMS_RANK[k.undeliverable] < SMS_RANK[k.delivered]


@pytest.mark.parametrize(
    ("current", "new", "expected"),
    [
        (None, DeliveryEventKind.queued, True),
        (DeliveryEventKind.queued, DeliveryEventKind.sent, True),
        (DeliveryEventKind.sent, DeliveryEventKind.queued, False),  # late "sending"
        (DeliveryEventKind.sent, DeliveryEventKind.sent, False),  # duplicate
        (DeliveryEventKind.sent, DeliveryEventKind.undeliverable, True),
        (DeliveryEventKind.undeliverable, DeliveryEventKind.sent, False),
        (DeliveryEventKind.undeliverable, DeliveryEventKind.delivered, True),
        (DeliveryEventKind.delivered, DeliveryEventKind.undeliverable, False),
        (DeliveryEventKind.delivered, DeliveryEventKind.sent, False),
        (DeliveryEventKind.sent, DeliveryEventKind.unknown, False),
        (DeliveryEventKind.unknown, DeliveryEventKind.sent, True),
    ],
)
def test_advances(current, new, expected):
    assert advances(current, new) is expected


def test_out_of_order_callbacks_converge():
    arrivals = ["delivered", "sent", "queued", "delivered", "sending"]
    state = None
    for status in arrivals:
        event = parse_status_callback({"MessageSid": SID, "MessageStatus": status}, 1)
        if advances(state, event.kind):
            state = event.kind
    assert state is DeliveryEventKind.delivered


# --- inbound ------------------------------------------------------------------------------------


def test_parse_inbound_ignores_unknown_params():
    params = {
        "ToCountry": "RO",
        "SmsMessageSid": SID,
        "NumMedia": "0",
        "SmsSid": SID,
        "SmsStatus": "received",
        "Body": "  9 - great  ",
        "To": "+40700000000",
        "NumSegments": "1",
        "MessageSid": SID,
        "AccountSid": ACCOUNT,
        "From": "+40721000111",
        "ApiVersion": "2010-04-01",
        "AddedByTwilioNextYear": "whatever",
    }
    assert parse_inbound(params) == InboundSms(
        message_sid=SID,
        from_number="+40721000111",
        to_number="+40700000000",
        body="  9 - great  ",
        opt_out_type=None,
    )


def test_parse_inbound_opt_out_type_and_missing_body():
    params = {"MessageSid": SID, "From": "+1", "To": "+2", "OptOutType": "stop"}
    inbound = parse_inbound(params)
    assert inbound.opt_out_type == "STOP"
    assert inbound.body == ""


def test_parse_inbound_empty_opt_out_type_is_none():
    params = {"MessageSid": SID, "From": "+1", "To": "+2", "Body": "x", "OptOutType": ""}
    assert parse_inbound(params).opt_out_type is None


@pytest.mark.parametrize("params", [{}, {"MessageSid": SID}, {"From": "+1", "Body": "STOP"}])
def test_parse_inbound_without_sid_or_from_raises(params):
    with pytest.raises(WebhookPayloadError):
        parse_inbound(params)


# --- TwiML --------------------------------------------------------------------------------------


def test_twiml_message_escapes():
    xml = twiml_message('Thanks <3 & "bye" > all')
    assert xml.endswith('<Response><Message>Thanks &lt;3 &amp; "bye" &gt; all</Message></Response>')
    assert xml.startswith("<?xml")


@pytest.mark.parametrize("text", [None, ""])
def test_twiml_empty_response(text):
    assert twiml_message(text).endswith("<Response />")
