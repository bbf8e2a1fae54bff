"""SendGrid Event Webhook: real ECDSA P-256 signatures and event parsing."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from channels.base import DeliveryEventKind
from channels.sendgrid_email.webhooks import (
    EMAIL_RANK,
    advances,
    normalise_public_key,
    parse_events,
    verify_sendgrid_signature,
)
from channels.webhook_errors import WebhookPayloadError

NOW = datetime(2024, 5, 14, 12, 0, tzinfo=UTC)
TS = str(int(NOW.timestamp()))
BODY = (
    b'[{"email":"ana@example.com","event":"delivered","sg_event_id":"e1",'
    b'"timestamp":1715688000}]\r\n'
)


@pytest.fixture(scope="module")
def private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def public_key(private_key) -> str:
    """The key as SendGrid's settings page shows it: base64 of the DER SubjectPublicKeyInfo."""
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def sign(private_key, body: bytes, timestamp: str = TS) -> str:
    """As SendGrid does: ECDSA-SHA256 over timestamp + body, DER signature, base64."""
    der = private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(der).decode("ascii")


# --- signature ----------------------------------------------------------------------------------


def test_valid_signature_passes(private_key, public_key):
    assert verify_sendgrid_signature(public_key, BODY, sign(private_key, BODY), TS, NOW)


def test_pem_key_is_accepted(private_key):
    pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert verify_sendgrid_signature(pem, BODY, sign(private_key, BODY), TS, NOW)


def test_normalise_public_key(public_key):
    wrapped = "-----BEGIN PUBLIC KEY-----\n" + public_key[:64] + "\n" + public_key[64:] + "\n"
    assert normalise_public_key(wrapped + "-----END PUBLIC KEY-----\n") == public_key
    assert normalise_public_key(f"  {public_key}\n") == public_key


def test_non_ascii_body_is_verified_byte_exact(private_key, public_key):
    body = '[{"event":"open","reason":"\u0218tefan \u2013 \u2713"}]'.encode()
    assert verify_sendgrid_signature(public_key, body, sign(private_key, body), TS, NOW)


def test_altered_body_fails(private_key, public_key):
    signature = sign(private_key, BODY)
    altered = BODY.replace(b"delivered", b"bounce")
    assert not verify_sendgrid_signature(public_key, altered, signature, TS, NOW)


def test_reserialised_json_fails(private_key, public_key):
    signature = sign(private_key, BODY)
    reserialised = json.dumps(json.loads(BODY)).encode()
    assert not verify_sendgrid_signature(public_key, reserialised, signature, TS, NOW)


def test_altered_timestamp_fails(private_key, public_key):
    signature = sign(private_key, BODY)
    other = str(int(TS) + 1)
    assert not verify_sendgrid_signature(public_key, BODY, signature, other, NOW)


def test_other_key_fails(private_key):
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = base64.b64encode(der).decode()
    assert not verify_sendgrid_signature(key, BODY, sign(private_key, BODY), TS, NOW)


def test_stale_and_future_timestamps_fail(private_key, public_key):
    for delta in (timedelta(minutes=11), timedelta(minutes=-11), timedelta(days=400)):
        ts = str(int((NOW - delta).timestamp()))
        signature = sign(private_key, BODY, ts)  # genuinely signed, but not fresh
        assert not verify_sendgrid_signature(public_key, BODY, signature, ts, NOW), delta


def test_within_max_age_passes(private_key, public_key):
    for delta in (timedelta(minutes=9), timedelta(minutes=-9)):
        ts = str(int((NOW - delta).timestamp()))
        assert verify_sendgrid_signature(public_key, BODY, sign(private_key, BODY, ts), ts, NOW)


def test_custom_max_age(private_key, public_key):
    ts = str(int((NOW - timedelta(minutes=3)).timestamp()))
    signature = sign(private_key, BODY, ts)
    assert not verify_sendgrid_signature(
        public_key, BODY, signature, ts, NOW, max_age=timedelta(minutes=2)
    )


@pytest.mark.parametrize(("signature", "timestamp"), [(None, TS), ("", TS), ("x", None), ("x", "")])
def test_missing_headers_fail(public_key, signature, timestamp):
    if signature == "x":
        signature = "MEUCIQ=="
    assert not verify_sendgrid_signature(public_key, BODY, signature, timestamp, NOW)


@pytest.mark.parametrize(
    "signature",
    [
        "not base64 at all!!",
        "abc",  # bad padding: the helper raises binascii.Error
        "====",
        base64.b64encode(b"\x30\x02\x01").decode(),  # truncated DER
        base64.b64encode(b"\x00" * 64).decode(),  # raw r||s, not DER
        "☃",
    ],
)
def test_garbage_signature_fails_without_raising(public_key, signature):
    assert not verify_sendgrid_signature(public_key, BODY, signature, TS, NOW)


@pytest.mark.parametrize(
    "timestamp",
    [
        "abc",
        "1.5e9",
        " " + TS,
        "-" + TS,
        "\uff11\uff17\uff11\uff15\uff16\uff18\uff18\uff10\uff10\uff10",
    ],
)
def test_non_numeric_timestamp_fails(private_key, public_key, timestamp):
    signature = sign(private_key, BODY, timestamp)
    assert not verify_sendgrid_signature(public_key, BODY, signature, timestamp, NOW)


@pytest.mark.parametrize("key", ["", "not a key", "MFkw", "-----BEGIN PUBLIC KEY-----\n-----END"])
def test_unusable_key_fails(private_key, key):
    assert not verify_sendgrid_signature(key, BODY, sign(private_key, BODY), TS, NOW)


def test_rsa_key_fails_without_raising(private_key):
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    der = rsa_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = base64.b64encode(der).decode()
    assert not verify_sendgrid_signature(key, BODY, sign(private_key, BODY), TS, NOW)


def test_non_utf8_body_fails(private_key, public_key):
    body = b"[\xff]"
    assert not verify_sendgrid_signature(public_key, body, sign(private_key, body), TS, NOW)


def test_naive_now_is_a_programming_error(private_key, public_key):
    with pytest.raises(ValueError, match="timezone"):
        verify_sendgrid_signature(
            public_key, BODY, sign(private_key, BODY), TS, NOW.replace(tzinfo=None)
        )


# --- parsing ------------------------------------------------------------------------------------

MSG = "euo2iKxdSayPF4YE4--I7A"  # the X-Message-Id header of the send (no dots)
SG_MESSAGE_ID = f"{MSG}.filterdrecv-5bd4d8f5d-7w6fb-1-664359B2-2B.0"
EMAIL = "ana@example.com"


def base_event(event: str, sg_event_id: str, **extra):
    return {
        "email": EMAIL,
        "timestamp": 1715688000,
        "smtp-id": "<870b3a2a-160c-4fc8-bc9a-bd0d5b943b81@nps.example>",
        "event": event,
        "category": ["nps"],
        "sg_event_id": sg_event_id,
        "sg_message_id": SG_MESSAGE_ID,
        "survey_id": "42",
        **extra,
    }


BATCH = [
    base_event("processed", "cHJvY2Vzc2Vk"),
    base_event("deferred", "ZGVmZXJyZWQ", response="400 try again later", attempt="5"),
    base_event("delivered", "ZGVsaXZlcmVk", response="250 OK", ip="168.1.1.1", tls=1),
    base_event(
        "open", "b3Blbg", useragent="Mozilla/5.0", ip="255.255.255.255", sg_machine_open=False
    ),
    base_event(
        "click", "Y2xpY2s", url="https://nps.example/s/abc", url_offset={"index": 0, "type": "html"}
    ),
    base_event(
        "bounce",
        "Ym91bmNl",
        reason="550 5.1.1 The email account that you tried to reach does not exist.",
        status="5.1.1",
        type="bounce",
        bounce_classification="Invalid Address",
    ),
    base_event(
        "bounce",
        "YmxvY2tlZA",
        reason="550 Blocked by reputation",
        status="5.7.1",
        type="blocked",
        bounce_classification="Reputation",
    ),
    base_event("dropped", "ZHJvcHBlZA", reason="Bounced Address", status="5.0.0"),
    base_event("spamreport", "c3BhbQ"),
    base_event("unsubscribe", "dW5zdWI"),
    base_event("group_unsubscribe", "Z3Vuc3Vi", asm_group_id=10, useragent="Mozilla/5.0"),
    base_event("group_resubscribe", "Z3Jlc3Vi", asm_group_id=10),
    base_event("account_status_change", "YWNjdA", type="compliance_suspend"),
]


def test_parse_realistic_batch():
    events = parse_events(json.dumps(BATCH).encode())
    k = DeliveryEventKind
    assert [e.kind for e in events] == [
        k.queued,
        k.deferred,
        k.delivered,
        k.opened,
        k.clicked,
        k.undeliverable,
        k.undeliverable,
        k.undeliverable,
        k.spam_report,
        k.opted_out,
        k.opted_out,
        k.opted_in,
        k.unknown,
    ]
    assert [e.event_id for e in events] == [raw["sg_event_id"] for raw in BATCH]
    for event, raw in zip(events, BATCH, strict=True):
        assert event.provider == "sendgrid"
        assert event.survey_id == 42
        assert event.provider_message_id == MSG
        assert event.occurred_at == datetime(2024, 5, 14, 12, 0, tzinfo=UTC)
        assert event.raw == raw  # email address included: stored raw, never logged

    bounce, blocked, dropped = events[5], events[6], events[7]
    assert (bounce.permanent, bounce.error_code) == (True, "5.1.1")
    assert (blocked.permanent, blocked.error_code) == (False, "5.7.1")
    assert dropped.permanent is True
    assert events[1].permanent is False  # deferred


def test_message_id_matches_send_receipt():
    raw = [
        base_event("delivered", "a", sg_message_id=f"{MSG}.recvd-5f54b5d587-pczjm-1-67BADEEA-6.0")
    ]
    assert parse_events(json.dumps(raw).encode())[0].provider_message_id == MSG
    raw = [base_event("delivered", "b", sg_message_id=MSG)]  # no suffix
    assert parse_events(json.dumps(raw).encode())[0].provider_message_id == MSG


def test_async_bounce_without_message_id():
    raw = base_event("bounce", "c", type="bounce", status="5.1.1")
    del raw["sg_message_id"]
    assert parse_events(json.dumps([raw]).encode())[0].provider_message_id is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("42", 42),
        (" 42 ", 42),
        (42, 42),
        ("", None),
        ("abc", None),
        ("4.2", None),
        ("-1", None),
        ("0", None),
        (True, None),
        (None, None),
        ([42], None),
        ("9" * 40, None),
    ],
)
def test_survey_id_custom_arg(value, expected):
    raw = base_event("delivered", "d", survey_id=value)
    assert parse_events(json.dumps([raw]).encode())[0].survey_id == expected


def test_survey_id_missing():
    raw = base_event("delivered", "e")
    del raw["survey_id"]
    assert parse_events(json.dumps([raw]).encode())[0].survey_id is None


def test_bad_timestamp_is_none():
    raw = [base_event("delivered", "f", timestamp="soon"), base_event("open", "g", timestamp=1e30)]
    assert [e.occurred_at for e in parse_events(json.dumps(raw).encode())] == [None, None]


def test_missing_event_id_gets_a_stable_one():
    raw = base_event("delivered", "x")
    del raw["sg_event_id"]
    body = json.dumps([raw, dict(reversed(raw.items()))]).encode()
    first, second = parse_events(body)
    assert first.event_id == second.event_id
    assert first.event_id.startswith("sha256:")


def test_empty_array_is_no_events():
    assert parse_events(b"[]") == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"event": "delivered"}',
        b'"x"',
        b"[1, 2]",
        b'[{"event":"open"}, null]',
        b"\xff\xfe\x00",
    ],
)
def test_garbage_raises_payload_error(body):
    with pytest.raises(WebhookPayloadError) as excinfo:
        parse_events(body)
    assert isinstance(excinfo.value, ValueError)
    assert EMAIL not in str(excinfo.value)


# --- rank ---------------------------------------------------------------------------------------


def test_rank_order():
    k = DeliveryEventKind
    order = [k.queued, k.deferred, k.delivered, k.undeliverable, k.opened, k.clicked]
    assert [EMAIL_RANK[kind] for kind in order] == sorted(EMAIL_RANK[kind] for kind in order)


@pytest.mark.parametrize(
    ("current", "new", "expected"),
    [
        (None, DeliveryEventKind.queued, True),
        (DeliveryEventKind.delivered, DeliveryEventKind.queued, False),  # late "processed"
        (DeliveryEventKind.delivered, DeliveryEventKind.deferred, False),
        (DeliveryEventKind.delivered, DeliveryEventKind.undeliverable, True),  # async bounce
        (DeliveryEventKind.undeliverable, DeliveryEventKind.delivered, False),
        (DeliveryEventKind.undeliverable, DeliveryEventKind.opened, True),
        (DeliveryEventKind.clicked, DeliveryEventKind.opened, False),
        (DeliveryEventKind.opened, DeliveryEventKind.opened, False),
        (DeliveryEventKind.delivered, DeliveryEventKind.opted_out, False),  # consent, not state
        (DeliveryEventKind.delivered, DeliveryEventKind.spam_report, False),
    ],
)
def test_advances(current, new, expected):
    assert advances(current, new) is expected


def test_shuffled_duplicated_batch_converges():
    kinds = [e.kind for e in parse_events(json.dumps(BATCH[:5] * 2).encode())]
    for order in (kinds, list(reversed(kinds))):
        state = None
        for kind in order:
            if advances(state, kind):
                state = kind
        assert state is DeliveryEventKind.clicked
