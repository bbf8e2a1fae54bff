"""SendGrid Event Webhook: signature check and parsing into :class:`DeliveryEvent` objects.

Pure functions: no database, no web framework. The caller (the web layer) reads the raw body
*bytes* and the two headers, calls :func:`verify_sendgrid_signature` (on ``False``: 403, write
nothing), then :func:`raw_sendgrid_events` (parsed with :func:`parse_events`), stores each raw
event keyed by ``event_id`` (unique) and applies it idempotently (:data:`EVENTS` reads a stored
event back); :data:`EMAIL_RANK` / :func:`advances` keep the delivery state from moving
backwards (SendGrid batches, duplicates and reorders events, and retries for 24 hours).

Events carry the recipient's email address: ``raw`` keeps it for the store; never log it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final

from sendgrid.helpers.eventwebhook import EventWebhook

from channels.base import ChannelName, DeliveryEvent, DeliveryEventKind, RawWebhook, webhook_id
from channels.sendgrid_email.errors import PROVIDER
from channels.webhook_errors import WebhookPayloadError

__all__ = [
    "EMAIL_EVENT_KINDS",
    "EMAIL_RANK",
    "EVENTS",
    "SIGNATURE_HEADER",
    "SOURCE_EVENTS",
    "TIMESTAMP_HEADER",
    "advances",
    "normalise_public_key",
    "parse_events",
    "raw_sendgrid_events",
    "verify_sendgrid_signature",
]

SIGNATURE_HEADER: Final = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER: Final = "X-Twilio-Email-Event-Webhook-Timestamp"

SOURCE_EVENTS: Final = "sendgrid"

DEFAULT_MAX_AGE: Final = timedelta(minutes=10)

#: SendGrid ``event`` -> normalised kind (``bounce`` is refined by its ``type``); anything else
#: (a new event type, an account event) is ``unknown``.
EMAIL_EVENT_KINDS: Final[Mapping[str, DeliveryEventKind]] = {
    "processed": DeliveryEventKind.queued,
    "deferred": DeliveryEventKind.deferred,
    "delivered": DeliveryEventKind.delivered,
    "bounce": DeliveryEventKind.undeliverable,
    "dropped": DeliveryEventKind.undeliverable,
    "open": DeliveryEventKind.opened,
    "click": DeliveryEventKind.clicked,
    "spamreport": DeliveryEventKind.spam_report,
    "unsubscribe": DeliveryEventKind.opted_out,
    "group_unsubscribe": DeliveryEventKind.opted_out,
    "group_resubscribe": DeliveryEventKind.opted_in,
}

#: Delivery-state order for one email; an event applies only if it ranks strictly higher
#: (:func:`advances`). queued < deferred < delivered < undeliverable < opened < clicked.
#: Unlike SMS, ``undeliverable`` outranks ``delivered``: SendGrid's "delivered" only means the
#: receiving server accepted the mail, and that server may bounce it afterwards (an asynchronous
#: bounce). An open or click proves the mail reached a mailbox, so it outranks a bounce.
#: ``spam_report``, ``opted_out``, ``opted_in`` and ``unknown`` are not delivery states: they
#: never change it (callers apply them as consent facts, deduplicated by ``event_id``).
EMAIL_RANK: Final[Mapping[DeliveryEventKind, int]] = {
    DeliveryEventKind.queued: 10,
    DeliveryEventKind.deferred: 20,
    DeliveryEventKind.delivered: 30,
    DeliveryEventKind.undeliverable: 40,
    DeliveryEventKind.opened: 50,
    DeliveryEventKind.clicked: 60,
}


def advances(current: DeliveryEventKind | None, new: DeliveryEventKind) -> bool:
    """Whether ``new`` moves an email from delivery state ``current`` (``None``: nothing yet)."""
    if new not in EMAIL_RANK:
        return False
    if current is None or current not in EMAIL_RANK:
        return True
    return EMAIL_RANK[new] > EMAIL_RANK[current]


# --- signature ----------------------------------------------------------------------------------

_PEM_ARMOUR = re.compile(r"-----(?:BEGIN|END) PUBLIC KEY-----")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def normalise_public_key(public_key: str) -> str:
    """The key as ``EventWebhook`` wants it: the base64 of the DER SubjectPublicKeyInfo of the
    P-256 key, one line, no PEM armour (the helper adds the armour itself). That is exactly the
    "Verification Key" SendGrid's settings page shows (``MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE...``);
    a full PEM block (``-----BEGIN PUBLIC KEY-----`` ...) is accepted too and unwrapped."""
    return "".join(_PEM_ARMOUR.sub("", public_key).split())


@lru_cache(maxsize=8)
def _verifier(public_key: str) -> EventWebhook:
    return EventWebhook(public_key)


def verify_sendgrid_signature(
    public_key: str,
    raw_body: bytes,
    signature: str | None,
    timestamp: str | None,
    now: datetime,
    max_age: timedelta = DEFAULT_MAX_AGE,
) -> bool:
    """Whether a Signed Event Webhook request is genuine and fresh.

    ``public_key``: see :func:`normalise_public_key`. ``raw_body``: the request body bytes as
    received (SendGrid signs ``timestamp + body``; re-serialised JSON would not match).
    ``signature`` / ``timestamp``: the :data:`SIGNATURE_HEADER` / :data:`TIMESTAMP_HEADER` values
    (base64 DER ECDSA-SHA256 signature; Unix seconds). ``now``: an aware datetime.

    Verification is ``sendgrid.helpers.eventwebhook.EventWebhook.verify_signature`` with the body
    decoded as UTF-8 text. That helper raises on malformed base64 or signatures and checks no
    freshness, so this function fails closed on everything: missing headers, an unusable key, a
    body that is not UTF-8, a timestamp that is not plain digits or is more than ``max_age`` in
    the past or the future, or any error from the helper -> ``False``. Never raises for input.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not public_key or not signature or not timestamp:
        return False
    if not _TIMESTAMP.fullmatch(timestamp):
        return False
    signed_at = datetime.fromtimestamp(int(timestamp), UTC)
    if abs(now - signed_at) > max_age:
        return False
    try:
        payload = raw_body.decode("utf-8")
        verifier = _verifier(normalise_public_key(public_key))
        return bool(verifier.verify_signature(payload, signature, timestamp))
    except Exception:  # bad base64, malformed DER, wrong key type: all "not verified"
        return False


# --- parsing ------------------------------------------------------------------------------------

_SURVEY_ID = re.compile(r"[1-9][0-9]{0,17}")


def _survey_id(value: object) -> int | None:
    """Our ``survey_id`` custom arg (a string, as custom args are), or ``None`` if absent or not a
    positive integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and _SURVEY_ID.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _message_id(value: object) -> str | None:
    """``sg_message_id`` is the ``X-Message-Id`` the send returned (22 base64url characters, no
    dot) plus a ``.filterdrecv-...`` / ``.recvd-...`` suffix naming the SendGrid server: keep what
    precedes the first ``"."`` so it equals our :class:`SendReceipt` id."""
    if not isinstance(value, str) or not value.strip():
        return None
    head = value.strip().split(".", 1)[0]
    return head or None


def _occurred_at(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _event_id(event: Mapping[str, object]) -> str:
    value = event.get("sg_event_id")
    if isinstance(value, str) and value.strip():
        return value.strip()
    # Never seen in practice; a stable id so duplicates still dedupe.
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _text(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    text = str(value).strip()
    return text or None


def _parse_event(event: dict[str, object]) -> DeliveryEvent:
    name = _text(event.get("event"))
    name = name.lower() if name else ""
    kind = EMAIL_EVENT_KINDS.get(name, DeliveryEventKind.unknown)
    error_code: str | None = None
    permanent = True
    if name == "bounce":
        # type "bounce": the address is bad; "blocked": the receiving server refused this mail
        # (reputation, content, rate) but the address may be fine.
        permanent = _text(event.get("type")) != "blocked"
        error_code = _text(event.get("status"))
    elif name == "deferred":
        permanent = False
    return DeliveryEvent(
        provider=PROVIDER,
        event_id=_event_id(event),
        kind=kind,
        survey_id=_survey_id(event.get("survey_id")),
        provider_message_id=_message_id(event.get("sg_message_id")),
        occurred_at=_occurred_at(event.get("timestamp")),
        error_code=error_code,
        permanent=permanent,
        raw=event,
        status=_status(event, kind),
        recipient=_recipient(event.get("email")),
    )


def _status(event: Mapping[str, object], kind: DeliveryEventKind) -> str:
    """The event's name as SendGrid wrote it, a bounce with its ``type`` (``bounce`` or
    ``blocked``: the address is bad, or only this mail was refused)."""
    value = event.get("event")
    bounce_type = event.get("type")
    if value == "bounce" and isinstance(bounce_type, str) and bounce_type in ("bounce", "blocked"):
        value = f"bounce ({bounce_type})"
    return str(value)[:40] if value else kind.value


def _recipient(value: object) -> str | None:
    """The event's ``email`` (the recipient): consent events for no survey find the customer by
    it."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def parse_events(raw_body: bytes) -> list[DeliveryEvent]:
    """A (verified) Event Webhook body -> one :class:`DeliveryEvent` per event, in body order.

    - ``event_id``: ``sg_event_id`` (dedupe on it: SendGrid sends duplicates);
    - ``survey_id``: the top-level ``survey_id`` custom arg, ``None`` if missing or not a positive
      integer;
    - ``provider_message_id``: ``sg_message_id`` up to its first ``"."`` (our ``X-Message-Id``);
      ``None`` when absent (asynchronous bounces carry none);
    - ``occurred_at``: ``timestamp`` (Unix seconds) in UTC;
    - ``kind``: :data:`EMAIL_EVENT_KINDS`; a ``bounce`` of ``type`` ``blocked`` is undeliverable
      but not ``permanent``; ``dropped`` is permanent; ``deferred`` is not; ``error_code`` is a
      bounce's SMTP enhanced ``status`` (e.g. ``5.1.1``);
    - ``raw``: the event dict as received (it holds the email address).

    Raises :class:`WebhookPayloadError` (a ``ValueError``) when the body is not UTF-8 JSON, not an
    array, or holds something other than objects.
    """
    try:
        decoded = json.loads(raw_body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WebhookPayloadError(
            f"event webhook body is not JSON ({type(exc).__name__})", provider=PROVIDER
        ) from None
    if not isinstance(decoded, list):
        raise WebhookPayloadError(
            f"event webhook body is a JSON {type(decoded).__name__}, not an array",
            provider=PROVIDER,
        )
    events: list[DeliveryEvent] = []
    for index, item in enumerate(decoded):
        if not isinstance(item, dict):
            raise WebhookPayloadError(
                f"event {index} is a JSON {type(item).__name__}, not an object", provider=PROVIDER
            )
        events.append(_parse_event(item))
    return events


# --- stored rows ----------------------------------------------------------------------------------


def raw_sendgrid_events(raw_body: bytes) -> list[RawWebhook]:
    """A verified Event Webhook body as raw rows, one per event, in body order (each event's own
    dict is its payload). Raises :class:`WebhookPayloadError` like :func:`parse_events`."""
    rows = []
    for event in parse_events(raw_body):
        name = event.raw.get("event")
        rows.append(
            RawWebhook(
                SOURCE_EVENTS,
                webhook_id(event.event_id),
                (name if isinstance(name, str) and name else event.kind.value)[:40],
                dict(event.raw),
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class _Events:
    """Stored events (:func:`raw_sendgrid_events`) read back as delivery events."""

    name: str = SOURCE_EVENTS
    provider: str = PROVIDER
    channel: ChannelName = ChannelName.email

    def advances(self, current: DeliveryEventKind | None, new: DeliveryEventKind) -> bool:
        return advances(current, new)

    def read(self, payload: Mapping[str, Any], received_at: datetime | None) -> DeliveryEvent:
        return _parse_event(dict(payload))


EVENTS: Final = _Events()
