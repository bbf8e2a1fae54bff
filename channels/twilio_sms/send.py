"""Sending SMS through Twilio's Messages API with the official client over httpx.

``POST {api_base}/2010-04-01/Accounts/{sid}/Messages.json`` with ``To``, ``From`` or
``MessagingServiceSid``, ``Body`` and ``StatusCallback`` (our survey id rides in its URL).
Errors are classified in :mod:`channels.twilio_sms.errors`. Twilio's create has no idempotency key,
so an outcome we cannot know is reported as such and settled by the reconciler with
:meth:`TwilioSmsChannel.find_recent_messages`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, NamedTuple

import httpx
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from channels.base import ChannelName, OutboundMessage, SendReceipt, TransientSendError
from channels.masking import mask_phone
from channels.twilio_sms.errors import PROVIDER, from_http_error, from_transport_error
from channels.twilio_sms.http import DEFAULT_API_BASE, HttpxTwilioClient

__all__ = ["RecentMessage", "TwilioSmsChannel", "sms_segments"]

log = logging.getLogger(__name__)

# GSM 03.38: the default alphabet (one septet each) and its extension table (escape + septet).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
GSM7_SINGLE, GSM7_MULTI = 160, 153  # septets per segment (a concatenated one loses 7 to its UDH)
UCS2_SINGLE, UCS2_MULTI = 70, 67  # UTF-16 code units per segment


def _is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def sms_segments(text: str) -> int:
    """How many SMS segments ``text`` takes: GSM-7 when every character is in the GSM 03.38
    alphabet (extension characters count two septets, never split across segments), else
    UCS-2 (UTF-16 code units; a surrogate pair is never split)."""
    if not text:
        return 1
    if _is_gsm7(text):
        units = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        single, multi = GSM7_SINGLE, GSM7_MULTI
    else:
        units = [len(ch.encode("utf-16-le")) // 2 for ch in text]
        single, multi = UCS2_SINGLE, UCS2_MULTI
    total = sum(units)
    if total <= single:
        return 1
    segments, used = 1, 0
    for size in units:
        if used + size > multi:
            segments, used = segments + 1, 0
        used += size
    return segments


class RecentMessage(NamedTuple):
    """One message found by :meth:`TwilioSmsChannel.find_recent_messages`."""

    sid: str
    status: str
    date_created: datetime | None


class TwilioSmsChannel:
    name: ChannelName = ChannelName.sms
    provider: str = PROVIDER

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        api_base: str = DEFAULT_API_BASE,
        timeout: float = 10.0,
        *,
        http: httpx.Client | None = None,
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("TwilioSmsChannel needs an account SID and an auth token")
        if not from_number and not messaging_service_sid:
            raise ValueError("TwilioSmsChannel needs a From number or a Messaging Service SID")
        self.account_sid = account_sid
        self.from_number = from_number or None
        self.messaging_service_sid = messaging_service_sid or None
        self.http_client = HttpxTwilioClient(api_base=api_base, timeout=timeout, client=http)
        # environment={...}: never pick up TWILIO_EDGE / TWILIO_REGION behind our back.
        self.client: Any = Client(
            account_sid,
            auth_token,
            http_client=self.http_client,
            environment={"NPS_DISPATCH": "1"},
        )

    def send(self, message: OutboundMessage) -> SendReceipt:
        fields: dict[str, Any] = {"to": message.to, "body": message.body_text}
        if self.messaging_service_sid:
            fields["messaging_service_sid"] = self.messaging_service_sid
        else:
            fields["from_"] = self.from_number
        if message.status_callback_url:
            fields["status_callback"] = message.status_callback_url
        try:
            created = self.client.messages.create(**fields)
        except TwilioRestException as exc:
            last = self.http_client.last_response
            retry_after = last.headers.get("Retry-After") if last is not None else None
            error = from_http_error(exc.status, exc.code, str(exc.msg or ""), retry_after)
            log.warning(
                "twilio: survey %s to %s refused: %s %s",
                message.survey_id,
                mask_phone(message.to),
                type(error).__name__,
                error,
            )
            raise error from None
        except httpx.TransportError as exc:
            error = from_transport_error(exc)
            log.warning(
                "twilio: survey %s to %s: %s",
                message.survey_id,
                mask_phone(message.to),
                error,
            )
            raise error from exc
        sid = getattr(created, "sid", None)
        if not sid:
            # Accepted but no SID: the message probably exists; let the reconciler decide.
            raise TransientSendError("Twilio answered without a message SID", provider=PROVIDER)
        segments = sms_segments(message.body_text)
        log.info(
            "twilio: survey %s to %s accepted as %s (%d segment%s)",
            message.survey_id,
            mask_phone(message.to),
            sid,
            segments,
            "" if segments == 1 else "s",
        )
        return SendReceipt(provider=PROVIDER, provider_message_id=str(sid), segments=segments)

    def find_recent_messages(self, to: str, sent_after: datetime) -> list[RecentMessage]:
        """Messages to ``to`` sent at or after ``sent_after`` (Messages list API, ``To`` and
        ``DateSent>=``), newest first; the reconciler matches a send of unknown outcome."""
        if sent_after.tzinfo is None:
            sent_after = sent_after.replace(tzinfo=UTC)
        try:
            found = self.client.messages.list(
                to=to, date_sent_after=sent_after.astimezone(UTC), page_size=50, limit=50
            )
        except TwilioRestException as exc:
            raise from_http_error(exc.status, exc.code, str(exc.msg or "")) from None
        except httpx.TransportError as exc:
            raise TransientSendError(
                f"{type(exc).__name__}: Twilio lookup failed", provider=PROVIDER
            ) from exc
        result = [
            RecentMessage(
                sid=str(item.sid),
                status=str(item.status),
                date_created=getattr(item, "date_created", None),
            )
            for item in found
        ]
        log.info(
            "twilio: %d recent message(s) to %s since %s",
            len(result),
            mask_phone(to),
            sent_after.isoformat(),
        )
        return result
