"""Sending SMS through Twilio's Messages API with the official client over httpx.

``POST {api_base}/2010-04-01/Accounts/{sid}/Messages.json`` with ``To``, ``From`` or
``MessagingServiceSid``, ``Body`` and ``StatusCallback``: the address of our status webhook,
:data:`STATUS_CALLBACK_PATH`, with the survey id in its query (named by
:meth:`TwilioSmsChannel.status_callback_url`, so only this package knows the route).
Errors are classified in :mod:`channels.twilio_sms.errors`. Twilio's create has no idempotency key,
so every answer that does not prove "nothing was created" is :class:`OutcomeUnknownError`: a 5xx
or 408, a connection lost after the request was written, and also a 2xx without a message SID or
whose body cannot be read (Twilio created the message but we cannot name it).

Such a send is settled by :meth:`TwilioSmsChannel.find_sent_messages`: Twilio's message list
filtered by recipient, sender (``From``, when we send from a number) and send time, of which only
messages with our exact body, from our sender, created after the send began, are taken. Another
message to the same number (another text, another sender, earlier) is never taken as ours.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import httpx
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.rest import Client

from channels.base import (
    ChannelName,
    FoundMessage,
    OutboundMessage,
    OutcomeUnknownError,
    SendError,
    SendReceipt,
    TransientSendError,
)
from channels.masking import mask_phone
from channels.twilio_sms.errors import PROVIDER, from_http_error, from_transport_error
from channels.twilio_sms.http import DEFAULT_API_BASE, HttpxTwilioClient

__all__ = ["STATUS_CALLBACK_PATH", "TwilioSmsChannel", "sms_segments"]

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


#: The route of our webhook for Twilio's status callbacks (the survey id rides in its query).
STATUS_CALLBACK_PATH = "/webhooks/twilio/status"

#: How many of the newest matching list entries one lookup reads (one page).
LOOKUP_LIMIT = 50


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

    def status_callback_url(self, public_base_url: str, survey_id: int) -> str:
        """Where Twilio posts the status of the message of ``survey_id``
        (:class:`channels.reconcile.StatusCallbacks`)."""
        return f"{public_base_url.rstrip('/')}{STATUS_CALLBACK_PATH}?survey_id={survey_id}"

    def send(self, message: OutboundMessage) -> SendReceipt:
        fields: dict[str, Any] = {"to": message.to, "body": message.body_text}
        if self.messaging_service_sid:
            fields["messaging_service_sid"] = self.messaging_service_sid
        else:
            fields["from_"] = self.from_number
        if message.status_callback_url:
            fields["status_callback"] = message.status_callback_url
        self.http_client.reset()
        try:
            created = self.client.messages.create(**fields)
        except TwilioRestException as exc:
            error = from_http_error(exc.status, exc.code, str(exc.msg or ""), self._retry_after())
        except TwilioServiceException as exc:
            # Twilio's newer problem documents (RFC 9457): the same status and code.
            detail = f"{exc.title}: {exc.detail}" if exc.detail else str(exc.title)
            error = from_http_error(exc.status, exc.code, detail, self._retry_after())
        except httpx.TransportError as exc:
            error = from_transport_error(exc)
        except Exception as exc:
            if not self.http_client.attempted:
                raise  # failed while building the request: nothing left
            error = self._unreadable_answer(exc)
        else:
            sid = getattr(created, "sid", None)
            if sid:
                return self._receipt(message, str(sid))
            error = OutcomeUnknownError(
                f"Twilio answered HTTP {self._last_status()} without a message SID: "
                "the message was probably created",
                provider=PROVIDER,
            )
        log.warning(
            "twilio: survey %s to %s: %s %s",
            message.survey_id,
            mask_phone(message.to),
            type(error).__name__,
            error,
        )
        raise error

    def _receipt(self, message: OutboundMessage, sid: str) -> SendReceipt:
        segments = sms_segments(message.body_text)
        # Neither the recipient nor the message's SID: the SID leads to Twilio's copy of the
        # message (number and body), and it is emptied from our rows when a customer is erased.
        # DEBUG: the send path logs the outcome of every send once, at INFO.
        log.debug(
            "twilio: survey %s accepted (%d segment%s)",
            message.survey_id,
            segments,
            "" if segments == 1 else "s",
        )
        return SendReceipt(provider=PROVIDER, provider_message_id=sid, segments=segments)

    def _retry_after(self) -> str | None:
        last = self.http_client.last_response
        value = last.headers.get("Retry-After") if last is not None else None
        return str(value) if value is not None else None

    def _last_status(self) -> str:
        last = self.http_client.last_response
        return str(last.status_code) if last is not None else "(none)"

    def _unreadable_answer(self, exc: Exception) -> SendError:
        """An exception after the request was handed to httpx that is neither a Twilio error
        answer nor a transport error: the answer could not be read (a 2xx that is not JSON, an
        error of the client library), so the message may exist."""
        last = self.http_client.last_response
        if last is not None and 400 <= last.status_code < 500:
            return from_http_error(last.status_code, None, type(exc).__name__, self._retry_after())
        return OutcomeUnknownError(
            f"{type(exc).__name__} reading Twilio's answer (HTTP {self._last_status()}): "
            "the message may have been created",
            provider=PROVIDER,
        )

    def find_sent_messages(
        self, message: OutboundMessage, sent_after: datetime
    ) -> list[FoundMessage]:
        """Messages Twilio created at or after ``sent_after`` that are exactly ``message``, oldest
        first. Asks the Messages list API for messages to ``message.to`` (and from our number,
        when we send from one) sent since ``sent_after``, then keeps only outbound API messages
        from our sender (number or messaging service) whose body is exactly ours; the bodies are
        compared here, in memory, and never stored or logged.

        Raises :class:`TransientSendError` for any failure to ask (HTTP error, unreadable
        answer, transport error): the caller keeps its own clock."""
        if sent_after.tzinfo is None:
            sent_after = sent_after.replace(tzinfo=UTC)
        sent_after = sent_after.astimezone(UTC)
        query: dict[str, Any] = {
            "to": message.to,
            "date_sent_after": sent_after,
            "page_size": LOOKUP_LIMIT,
            "limit": LOOKUP_LIMIT,
        }
        if not self.messaging_service_sid:
            query["from_"] = self.from_number
        self.http_client.reset()
        try:
            listed = self.client.messages.list(**query)
        except Exception as exc:
            raise TransientSendError(
                f"Twilio lookup failed: {type(exc).__name__} (HTTP {self._last_status()})",
                provider=PROVIDER,
            ) from None
        found = sorted(
            (hit for item in listed if (hit := self._as_ours(item, message, sent_after))),
            key=lambda hit: (hit.created_at or sent_after, hit.provider_message_id),
        )
        log.info(
            "twilio: %d of %d listed message(s) to %s since %s are survey %s's",
            len(found),
            len(listed),
            mask_phone(message.to),
            sent_after.isoformat(),
            message.survey_id,
        )
        return found

    def _as_ours(
        self, item: Any, message: OutboundMessage, sent_after: datetime
    ) -> FoundMessage | None:
        sid = getattr(item, "sid", None)
        created = getattr(item, "date_created", None) or getattr(item, "date_sent", None)
        if self.messaging_service_sid:
            ours = getattr(item, "messaging_service_sid", None) == self.messaging_service_sid
        else:
            ours = getattr(item, "from_", None) == self.from_number
        if not (
            sid
            and ours
            and getattr(item, "direction", None) == "outbound-api"
            and getattr(item, "to", None) == message.to
            and getattr(item, "body", None) == message.body_text
            and isinstance(created, datetime)
            and created >= sent_after
        ):
            return None
        return FoundMessage(
            provider_message_id=str(sid),
            status=str(getattr(item, "status", "")),
            created_at=created,
        )
