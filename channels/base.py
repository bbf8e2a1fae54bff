"""The one vocabulary every channel speaks.

A channel sends an :class:`OutboundMessage` and hands back a :class:`SendReceipt`, or raises a
:class:`SendError` subclass that says what the provider's answer proves:

- :class:`TransientSendError`: nothing was created (a 429, a refused connection), so trying again
  later sends one message, not two;
- :class:`PermanentSendError`: nothing was created and trying again cannot help;
- :class:`OutcomeUnknownError`: the message may exist (a 5xx, a 408, a connection lost after the
  request was written, a success answer we cannot read). Neither provider takes an idempotency
  key, so this is never retried: only the provider's own evidence (a status callback, an event,
  a :class:`MessageLookup`) settles it.

Webhooks: a provider's route keeps each verified event as a :class:`RawWebhook`; a
:class:`WebhookSource` (one per kind of provider webhook, listed in
``channels/webhook_sources.py``) turns a stored raw payload back into a :class:`DeliveryEvent`
or a :class:`ReceivedSms`. Nothing outside ``channels/`` knows a provider's field names or error
codes (the approach of django-anymail).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from config import ChannelName

# ChannelName is the config's (one type for the channels everywhere), offered here beside the
# rest of the channel vocabulary.
__all__ = [
    "Channel",
    "ChannelName",
    "DeliveryEvent",
    "DeliveryEventKind",
    "FoundMessage",
    "MessageLookup",
    "OutboundMessage",
    "OutcomeUnknownError",
    "PermanentSendError",
    "RawWebhook",
    "ReceivedSms",
    "Reply",
    "ReplyKind",
    "SendError",
    "SendReceipt",
    "TransientSendError",
    "WebhookSource",
    "webhook_id",
]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message to one recipient. ``survey_id`` travels with it so callbacks find the survey."""

    survey_id: int
    channel: ChannelName
    to: str  # E.164 phone number or normalised email address
    body_text: str
    subject: str | None = None
    body_html: str | None = None
    unsubscribe_url: str | None = None
    status_callback_url: str | None = None
    is_reminder: bool = False
    #: To the shop's own staff (a detractor alert), not to a customer: sent outside the survey
    #: unsubscribe group, which is for customers and would let an alert be unsubscribed from,
    #: or suppressed for staff who unsubscribed from surveys.
    to_staff: bool = False


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """The provider accepted the message. ``provider_message_id`` is ``None`` when the provider
    accepted it without naming it (its events still find the survey by our survey id)."""

    provider: str
    provider_message_id: str | None
    segments: int | None = None  # SMS only


class SendError(Exception):
    """Base of send failures; ``code`` is the provider's error code when it gave one."""

    def __init__(self, message: str, *, code: str | None = None, provider: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.provider = provider


class TransientSendError(SendError):
    """Nothing was created and trying again later may succeed (429, a connection refused or
    timed out before the request was written, our own credentials)."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        provider: str = "",
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message, code=code, provider=provider)
        self.retry_after_seconds = retry_after_seconds


class PermanentSendError(SendError):
    """This recipient cannot be reached on this channel; ``revokes_consent`` when the provider
    says the recipient opted out (Twilio 21610), which is evidence for a consent revocation."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        provider: str = "",
        revokes_consent: bool = False,
    ) -> None:
        super().__init__(message, code=code, provider=provider)
        self.revokes_consent = revokes_consent


class OutcomeUnknownError(SendError):
    """The provider may have created the message: a 5xx or 408 answer, a connection lost or timed
    out after the request was written, a success answer without the message's id or that cannot
    be read. Never retried: the reconciler settles it from callbacks or a provider lookup."""


class DeliveryEventKind(enum.StrEnum):
    queued = "queued"
    sent = "sent"
    delivered = "delivered"
    deferred = "deferred"
    undeliverable = "undeliverable"  # bounce, dropped, undelivered, failed after acceptance
    opened = "opened"
    clicked = "clicked"
    opted_out = "opted_out"  # unsubscribe, group unsubscribe, STOP
    opted_in = "opted_in"  # group resubscribe, START
    spam_report = "spam_report"
    unknown = "unknown"


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """A provider's report about one message, normalised."""

    provider: str
    event_id: str  # unique per provider: dedupe key for the raw store
    kind: DeliveryEventKind
    survey_id: int | None
    provider_message_id: str | None
    occurred_at: datetime | None
    error_code: str | None = None
    permanent: bool = True
    raw: dict[str, object] = field(default_factory=dict)
    status: str = ""  # the provider's own name for what happened (at most 40 characters)
    recipient: str | None = None  # the email address the event names, when it names one


class ReplyKind(enum.StrEnum):
    score = "score"
    opt_out = "opt_out"
    opt_in = "opt_in"
    help = "help"
    text = "text"


@dataclass(frozen=True, slots=True)
class Reply:
    """An interpreted SMS reply; ``score`` is set only for ``kind == score``."""

    kind: ReplyKind
    score: int | None = None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class ReceivedSms:
    """An SMS a customer sent us, normalised: ``reply`` is what it means (the channel read the
    body and any opt-out verdict of the provider), ``body`` the text as sent."""

    provider: str
    message_id: str  # the provider's id: evidence for a consent change
    from_number: str
    body: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class RawWebhook:
    """One provider event as stored: ``source`` names its :class:`WebhookSource`,
    ``external_id`` is the provider's unique id for it (see :func:`webhook_id`)."""

    source: str
    external_id: str
    event_type: str
    payload: dict[str, Any]


def webhook_id(value: str) -> str:
    """A provider's event id as stored: kept when it fits (200 characters), else its hash."""
    return value if len(value) <= 200 else "sha256:" + hashlib.sha256(value.encode()).hexdigest()


class WebhookSource(Protocol):
    """One kind of provider webhook, as stored: reads a stored raw payload back into a
    normalised event, and says how that provider's delivery states are ordered."""

    @property
    def name(self) -> str:
        """The ``source`` of its :class:`RawWebhook` rows."""
        ...

    @property
    def provider(self) -> str: ...

    @property
    def channel(self) -> ChannelName: ...

    def advances(self, current: DeliveryEventKind | None, new: DeliveryEventKind) -> bool:
        """Whether ``new`` moves a message from delivery state ``current`` (``None``: none yet)."""
        ...

    def read(
        self, payload: Mapping[str, Any], received_at: datetime | None
    ) -> DeliveryEvent | ReceivedSms:
        """A stored raw payload as a normalised event; raises ``WebhookPayloadError`` when it is
        not what the provider sends."""
        ...


@dataclass(frozen=True, slots=True)
class FoundMessage:
    """A message found in the provider's own log by a :class:`MessageLookup`."""

    provider_message_id: str
    status: str
    created_at: datetime | None


class Channel(Protocol):
    name: ChannelName
    provider: str

    def send(self, message: OutboundMessage) -> SendReceipt: ...


@runtime_checkable
class MessageLookup(Protocol):
    """A channel whose provider can be asked what it created, to settle an unknown outcome."""

    def find_sent_messages(
        self, message: OutboundMessage, sent_after: datetime
    ) -> list[FoundMessage]:
        """Messages the provider created at or after ``sent_after`` that are exactly
        ``message``: same recipient, same sender, same body. Raises :class:`SendError` when
        the provider cannot be asked."""
        ...
