"""Twilio webhooks: signature check, status callbacks, inbound SMS, TwiML replies.

Pure functions: no database, no web framework. The caller (the web layer) does, in order:

1. ``url = public_url(settings.public_base_url, request.url.path, request.url.query)`` and
   ``verify_twilio_signature(auth_token, url, form, request.headers.get("X-Twilio-Signature"))``;
   on ``False`` answer 403 and write nothing.
2. Store the raw form keyed by the event id (:func:`raw_twilio_status`,
   :func:`raw_twilio_inbound`), then apply it idempotently: :data:`STATUS_CALLBACKS` and
   :data:`INBOUND_SMS` read a stored row back (:func:`parse_status_callback` with
   :func:`survey_id_from_query`, :func:`parse_inbound`).
3. Answer inbound SMS with :func:`twiml_message`.

Status callbacks arrive late, twice and out of order: :data:`SMS_RANK` / :func:`advances` say
whether an event moves a message's delivery state forward. Payloads carry phone numbers: keep them
in ``raw`` for the store, never log them (use :mod:`channels.masking`).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final
from urllib.parse import parse_qs

from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from channels.base import (
    ChannelName,
    DeliveryEvent,
    DeliveryEventKind,
    RawWebhook,
    ReceivedSms,
    webhook_id,
)
from channels.twilio_sms.errors import PROVIDER
from channels.twilio_sms.replies import interpret_reply
from channels.webhook_errors import WebhookPayloadError

__all__ = [
    "INBOUND_SMS",
    "SIGNATURE_HEADER",
    "SMS_ERROR_PERMANENT",
    "SMS_RANK",
    "SMS_STATUS_KINDS",
    "SOURCE_INBOUND",
    "SOURCE_STATUS",
    "STATUS_CALLBACKS",
    "InboundSms",
    "TwilioParams",
    "advances",
    "parse_inbound",
    "parse_status_callback",
    "public_url",
    "raw_twilio_inbound",
    "raw_twilio_status",
    "survey_id_from_query",
    "twiml_message",
    "verify_twilio_signature",
]

SIGNATURE_HEADER: Final = "X-Twilio-Signature"

SOURCE_STATUS: Final = "twilio_status"
SOURCE_INBOUND: Final = "twilio_inbound"

#: A received form: a mapping (one value per name) or every (name, value) pair in order.
#: Multi-dicts with ``multi_items()`` (Starlette's ``FormData``) keep repeated names.
TwilioParams = Mapping[str, str] | Iterable[tuple[str, str]]

#: Twilio ``MessageStatus`` -> normalised kind. Anything else (``receiving``, ``received``,
#: ``partially_delivered``, a status Twilio adds later) is ``unknown``.
SMS_STATUS_KINDS: Final[Mapping[str, DeliveryEventKind]] = {
    "accepted": DeliveryEventKind.queued,  # a Messaging Service accepted it
    "scheduled": DeliveryEventKind.queued,
    "queued": DeliveryEventKind.queued,
    "sending": DeliveryEventKind.queued,
    "sent": DeliveryEventKind.sent,  # handed to the carrier
    "delivered": DeliveryEventKind.delivered,  # the carrier's delivery receipt
    "read": DeliveryEventKind.delivered,  # read receipt (RCS / WhatsApp): delivered a fortiori
    "undelivered": DeliveryEventKind.undeliverable,  # the carrier could not deliver
    "failed": DeliveryEventKind.undeliverable,  # Twilio could not send it
    "canceled": DeliveryEventKind.undeliverable,  # a scheduled message cancelled (by us)
}

#: Callback ``ErrorCode`` -> ``permanent``: ``True`` means evidence that this *number* cannot get
#: SMS from us (callers may stop using it); ``False`` means this message failed for a reason that
#: is not the recipient's (or may pass). Codes not listed, and failures without a code, are
#: ``False``: an unknown code is not evidence against a contact. Every failure is
#: ``undeliverable`` (final for the message) whatever its permanence.
SMS_ERROR_PERMANENT: Final[Mapping[str, bool]] = {
    "30003": False,  # unreachable handset (off, out of coverage): may pass later
    "30004": True,  # message blocked: the recipient (or their carrier) blocks this sender
    "30005": True,  # unknown destination handset: the number does not exist
    "30006": True,  # landline or unreachable carrier
    "30007": False,  # carrier filtering: our content or sender, not the recipient
    "30008": False,  # unknown error
}

#: Delivery-state order. An event applies only if it ranks strictly higher than the state
#: already recorded (:func:`advances`), so duplicates and late, out-of-order callbacks are no-ops.
#: queued < sent < undeliverable < delivered: final states beat non-final ones; a delivery
#: receipt is positive evidence the handset got the message, so nothing displaces ``delivered``
#: (a "failed" after "delivered" should not happen; if it does, we keep the evidence of contact).
#: Kinds not listed (``unknown``) never change the delivery state.
SMS_RANK: Final[Mapping[DeliveryEventKind, int]] = {
    DeliveryEventKind.queued: 10,
    DeliveryEventKind.sent: 20,
    DeliveryEventKind.undeliverable: 30,
    DeliveryEventKind.delivered: 40,
}


def advances(current: DeliveryEventKind | None, new: DeliveryEventKind) -> bool:
    """Whether ``new`` moves an SMS from delivery state ``current`` (``None``: nothing yet)."""
    if new not in SMS_RANK:
        return False
    if current is None or current not in SMS_RANK:
        return True
    return SMS_RANK[new] > SMS_RANK[current]


class _MultiParams:
    """Every received (name, value) pair, shaped as ``RequestValidator`` reads a multi-dict:
    iterating gives the names, ``getall(name)`` every value of one name."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            self._values.setdefault(name, []).append(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def getall(self, name: str) -> list[str]:
        return self._values[name]


def _pairs(params: TwilioParams) -> list[tuple[str, str]]:
    multi_items = getattr(params, "multi_items", None)
    if callable(multi_items):
        return [(str(k), str(v)) for k, v in multi_items()]
    if isinstance(params, Mapping):
        return [(str(k), str(v)) for k, v in params.items()]
    return [(str(k), str(v)) for k, v in params]


def _as_dict(params: TwilioParams) -> dict[str, str]:
    """One value per name (the last one, as a form decoder would keep)."""
    return dict(_pairs(params))


def public_url(base_url: str, path: str, query_string: str = "") -> str:
    """The URL Twilio called, rebuilt from our public base URL (``NPS_PUBLIC_BASE_URL``).

    Behind a proxy or load balancer the request's own scheme, host and port are not the ones
    Twilio signed. ``base_url`` is the public origin (plus any path prefix a proxy strips),
    ``path`` the request path as the app sees it, ``query_string`` the raw query exactly as
    received (not re-encoded from parsed values: Twilio signs the characters it sent). Joined
    as ``base_url.rstrip("/") + path [+ "?" + query_string]``; no other normalisation.
    """
    if not path.startswith("/"):
        path = "/" + path
    url = base_url.rstrip("/") + path
    return f"{url}?{query_string}" if query_string else url


def verify_twilio_signature(
    auth_token: str, url: str, params: TwilioParams, signature: str | None
) -> bool:
    """Whether ``signature`` (the ``X-Twilio-Signature`` header) signs ``url`` + ``params``.

    ``url`` is the public one (see :func:`public_url`); ``params`` every POSTed form field, none
    filtered out. Uses ``twilio.request_validator.RequestValidator`` (HMAC-SHA1 with the account
    auth token, compared in constant time, as given, then with and without the default port).
    Fails closed: an empty token, a missing or empty signature, or any error is ``False``.
    """
    if not auth_token or not signature or not url:
        return False
    try:
        validator = _validator(auth_token)
        form = _MultiParams(_pairs(params))
        # The URL exactly as rebuilt first: one HMAC for a genuine request. The library's own
        # check, which tries the URL with and without its default port, only when that fails.
        expected = str(validator.compute_signature(url, form))
        if hmac.compare_digest(expected.encode(), signature.encode()):
            return True
        return bool(validator.validate(url, form, signature))
    except (TypeError, ValueError, UnicodeError):
        return False


@lru_cache(maxsize=8)
def _validator(auth_token: str) -> RequestValidator:
    return RequestValidator(auth_token)


_SURVEY_ID = re.compile(r"[1-9][0-9]{0,17}")


def _survey_id(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if _SURVEY_ID.fullmatch(value) else None


def survey_id_from_query(query_string: str) -> int | None:
    """Our survey id from the StatusCallback URL's query (``...?survey_id=42``), or ``None``
    when it is missing, repeated, or not a positive integer."""
    values = parse_qs(query_string, keep_blank_values=True).get("survey_id", [])
    return _survey_id(values[0]) if len(values) == 1 else None


def _param(params: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = params.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def parse_status_callback(
    params: TwilioParams, survey_id: int | None, *, received_at: datetime | None = None
) -> DeliveryEvent:
    """A status callback as a :class:`DeliveryEvent`.

    ``survey_id`` comes from our StatusCallback URL (:func:`survey_id_from_query`), not from the
    form. ``event_id`` is ``"{MessageSid}:{MessageStatus}"``: Twilio re-sends a state, and one
    message reaches each state once, so this dedupes. Twilio callbacks carry no event time:
    ``occurred_at`` is ``received_at`` (``RawDlrDoneDate`` has no time zone and is left in
    ``raw``). ``error_code`` is ``ErrorCode`` when non-empty; ``permanent`` follows
    :data:`SMS_ERROR_PERMANENT` for failures (``canceled`` is not permanent). Raises
    :class:`WebhookPayloadError` without ``MessageSid`` or ``MessageStatus``.
    """
    form = _as_dict(params)
    sid = _param(form, "MessageSid", "SmsSid")
    status = _param(form, "MessageStatus", "SmsStatus")
    if sid is None or status is None:
        raise WebhookPayloadError(
            "status callback without MessageSid or MessageStatus", provider=PROVIDER
        )
    status = status.lower()
    kind = SMS_STATUS_KINDS.get(status, DeliveryEventKind.unknown)
    error_code = _param(form, "ErrorCode")
    permanent = True
    if kind is DeliveryEventKind.undeliverable:
        permanent = SMS_ERROR_PERMANENT.get(error_code, False) if error_code else False
    # The status as Twilio wrote it (for reasons and history), from the raw field.
    label = form.get("MessageStatus") or form.get("SmsStatus")
    return DeliveryEvent(
        provider=PROVIDER,
        event_id=f"{sid}:{status}",
        kind=kind,
        survey_id=survey_id,
        provider_message_id=sid,
        occurred_at=received_at,
        error_code=error_code,
        permanent=permanent,
        raw=dict(form),
        status=str(label)[:40] if label else kind.value,
    )


@dataclass(frozen=True, slots=True)
class InboundSms:
    """An SMS a customer sent us. ``opt_out_type`` is Twilio's Advanced Opt-Out verdict
    (``STOP``, ``START``, ``HELP``, upper-cased) when that feature is on, else ``None``."""

    message_sid: str
    from_number: str
    to_number: str
    body: str
    opt_out_type: str | None = None


def parse_inbound(params: TwilioParams) -> InboundSms:
    """An inbound-SMS webhook as :class:`InboundSms`. Unknown parameters are ignored, never
    rejected (Twilio adds some without notice). ``Body`` is kept as sent (missing: ``""``, e.g.
    a picture-only MMS). Raises :class:`WebhookPayloadError` without ``MessageSid`` or ``From``."""
    form = _as_dict(params)
    sid = _param(form, "MessageSid", "SmsSid", "SmsMessageSid")
    from_number = _param(form, "From")
    if sid is None or from_number is None:
        raise WebhookPayloadError("inbound SMS without MessageSid or From", provider=PROVIDER)
    opt_out_type = _param(form, "OptOutType")
    return InboundSms(
        message_sid=sid,
        from_number=from_number,
        to_number=_param(form, "To") or "",
        body=form.get("Body", ""),
        opt_out_type=opt_out_type.upper() if opt_out_type else None,
    )


def twiml_message(text: str | None) -> str:
    """The TwiML answer to an inbound SMS: ``<Response><Message>text</Message></Response>``, or
    an empty ``<Response />`` (no reply) for ``None`` / ``""``. Built with Twilio's
    ``MessagingResponse``, which escapes ``<``, ``&`` and ``>``. Serve as ``application/xml``."""
    response = MessagingResponse()
    if text:
        response.message(text)
    return str(response)


# --- stored rows ----------------------------------------------------------------------------------


def raw_twilio_status(form: Mapping[str, str], query_string: str) -> RawWebhook:
    """A verified status callback as a raw row: the form and our StatusCallback URL's query
    (which carries the survey id). Raises :class:`WebhookPayloadError` if malformed."""
    event = parse_status_callback(form, survey_id_from_query(query_string))
    return RawWebhook(
        SOURCE_STATUS,
        webhook_id(event.event_id),
        event.kind.value,
        {"form": dict(form), "query": query_string},
    )


def raw_twilio_inbound(form: Mapping[str, str]) -> RawWebhook:
    """A verified inbound SMS as a raw row (raises :class:`WebhookPayloadError` if malformed)."""
    sms = parse_inbound(form)
    return RawWebhook(
        SOURCE_INBOUND, webhook_id(sms.message_sid), "inbound_sms", {"form": dict(form)}
    )


def _stored_form(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


@dataclass(frozen=True, slots=True)
class _StatusCallbacks:
    """Stored status callbacks (:func:`raw_twilio_status`) read back as delivery events."""

    name: str = SOURCE_STATUS
    provider: str = PROVIDER
    channel: ChannelName = ChannelName.sms

    def advances(self, current: DeliveryEventKind | None, new: DeliveryEventKind) -> bool:
        return advances(current, new)

    def read(self, payload: Mapping[str, Any], received_at: datetime | None) -> DeliveryEvent:
        query = str(payload.get("query") or "")
        return parse_status_callback(
            _stored_form(payload.get("form")),
            survey_id_from_query(query),
            received_at=received_at,
        )


@dataclass(frozen=True, slots=True)
class _InboundSms:
    """Stored inbound SMS (:func:`raw_twilio_inbound`) read back, their meaning interpreted
    (Twilio's Advanced Opt-Out verdict first, see :func:`interpret_reply`)."""

    name: str = SOURCE_INBOUND
    provider: str = PROVIDER
    channel: ChannelName = ChannelName.sms

    def advances(self, current: DeliveryEventKind | None, new: DeliveryEventKind) -> bool:
        return advances(current, new)

    def read(self, payload: Mapping[str, Any], received_at: datetime | None) -> ReceivedSms:
        sms = parse_inbound(_stored_form(payload.get("form")))
        return ReceivedSms(
            provider=PROVIDER,
            message_id=sms.message_sid,
            from_number=sms.from_number,
            body=sms.body,
            reply=interpret_reply(sms.body, sms.opt_out_type),
        )


STATUS_CALLBACKS: Final = _StatusCallbacks()
INBOUND_SMS: Final = _InboundSms()
