"""Responses: what providers and customers tell us after an invitation, applied to surveys.

Three inputs, one set of rules:

- **Delivery events** (Twilio status callbacks, the SendGrid Event Webhook), already normalised to
  :class:`~channels.base.DeliveryEvent` by the channel: :mod:`dispatch.responses.delivery`.
- **Inbound SMS** (STOP/START/HELP, then the score, the follow-up comment, or one re-prompt):
  :mod:`dispatch.responses.sms`.
- **The answer page** (scores, comments, the unsubscribe link): :mod:`dispatch.responses.answers`.

Webhooks are **stored, then processed** (:mod:`dispatch.responses.store`): :func:`ingest_webhooks`
keeps each raw event once, then applies it; :func:`replay_unhandled_webhooks` (run from the
scheduler) applies again what failed. The webhook routes use the quicker intake of
:mod:`dispatch.responses.intake`: :func:`take_delivery_event`, :func:`take_delivery_batch` and
:func:`take_inbound_sms` store and answer, applying at once only what is cheap or must not wait,
and leave the rest stored for the replay. This module routes a stored row to its rules
(:func:`_apply_row`): the row's source (``channels.webhook_sources``) reads it back as a
normalised :class:`~channels.base.DeliveryEvent` or :class:`~channels.base.ReceivedSms`; nothing
here knows a provider's field names. The rules are looked up here, by name, when a row is
applied, so replacing one of them on this package (``apply_delivery_event``, or
``apply_delivery_events`` that the replay applies runs of delivery events with) replaces it for
the stored-row path too.

Every public name is importable from ``dispatch.responses``. The raw rows of each provider are
built by its channel (``channels/*/webhooks.py``): nothing here knows a provider's fields.

No phone number or email address is logged (``channels.masking``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy.orm import Session, sessionmaker

from channels.base import DeliveryEvent, RawWebhook, ReceivedSms
from channels.webhook_sources import WEBHOOK_SOURCES as SOURCES
from config import OperatorConfig
from dispatch.responses import intake, store
from dispatch.responses.answers import record_web_comment, record_web_score, unsubscribe_email
from dispatch.responses.common import (
    ANSWERABLE_STATES,
    MAX_COMMENT,
    SMS_REPLY_STATES,
    Applied,
    Handled,
    ReplayReport,
    SmsReply,
    StoredWebhook,
    WebAnswer,
    can_answer,
)
from dispatch.responses.delivery import apply_delivery_event
from dispatch.responses.delivery_batch import applies_together, apply_delivery_events
from dispatch.responses.intake import Taken, take_delivery_event
from dispatch.responses.sms import apply_inbound_sms
from dispatch.responses.store import (
    REPLAY_MAX_ATTEMPTS,
    WEBHOOK_SOURCES,
    given_up_webhooks,
    replay_pause,
    store_webhooks,
)
from models import InboundEvent

__all__ = [
    "ANSWERABLE_STATES",
    "MAX_COMMENT",
    "REPLAY_MAX_ATTEMPTS",
    "SMS_REPLY_STATES",
    "WEBHOOK_SOURCES",
    "Applied",
    "Handled",
    "RawWebhook",
    "ReplayReport",
    "SmsReply",
    "StoredWebhook",
    "Taken",
    "WebAnswer",
    "apply_delivery_event",
    "apply_delivery_events",
    "apply_inbound_sms",
    "can_answer",
    "given_up_webhooks",
    "handle_webhook",
    "ingest_webhooks",
    "record_web_comment",
    "record_web_score",
    "replay_pause",
    "replay_unhandled_webhooks",
    "store_webhooks",
    "take_delivery_batch",
    "take_delivery_event",
    "take_inbound_sms",
    "unsubscribe_email",
]


def _stored_event(row: InboundEvent) -> DeliveryEvent | ReceivedSms | str:
    """A stored row read back through its source's channel, or why there is nothing to read
    (raises when the channel refuses the payload)."""
    payload = row.payload
    if not isinstance(payload, dict):
        return "payload erased"
    source = SOURCES.get(row.source)
    if source is None:
        return f"unknown source {row.source}"
    return source.read(payload, row.received_at)


def _apply_row(
    session: Session, row: InboundEvent, config: OperatorConfig, now: datetime, *, live: bool
) -> Applied:
    """Read a stored row back through its source's channel, then apply it."""
    event = _stored_event(row)
    if isinstance(event, str):
        return Applied(event)
    if isinstance(event, ReceivedSms):
        return apply_inbound_sms(session, event, config, now, live=live)
    return apply_delivery_event(session, event, config, now)


def _apply(
    session: Session, row: InboundEvent, config: OperatorConfig, now: datetime, live: bool
) -> Applied:
    return _apply_row(session, row, config, now, live=live)


def _read_delivery(row: InboundEvent) -> DeliveryEvent | None:
    """A stored row's delivery event when the replay may apply it with others
    (:func:`~dispatch.responses.delivery_batch.applies_together`); ``None`` sends it one by one,
    and so does a payload its channel cannot read (the one-by-one form records the failure)."""
    try:
        event = _stored_event(row)
    except Exception:
        return None
    if isinstance(event, DeliveryEvent) and applies_together(event):
        return event
    return None


def _apply_events(
    session: Session, events: Sequence[DeliveryEvent], config: OperatorConfig, now: datetime
) -> list[Applied]:
    return apply_delivery_events(session, events, config, now)


_TOGETHER: Final = store.ApplyTogether(_read_delivery, _apply_events)


def handle_webhook(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    row_id: int,
    *,
    now: datetime | None = None,
    live: bool = True,
    skip_locked: bool = False,
) -> Handled:
    """Apply one stored row, once (:func:`dispatch.responses.store.handle_webhook`)."""
    return store.handle_webhook(
        factory, config, row_id, _apply, now=now, live=live, skip_locked=skip_locked
    )


def ingest_webhooks(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    raws: Sequence[RawWebhook],
    *,
    now: datetime | None = None,
) -> list[Handled]:
    """Store, then process: what every webhook route calls after verifying the signature."""
    return store.ingest_webhooks(factory, config, raws, _apply, now=now)


def take_delivery_batch(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    raws: Sequence[RawWebhook],
    *,
    now: datetime | None = None,
) -> list[Taken]:
    """Store a batch of delivery events; apply its consent events now, the rest later
    (:func:`dispatch.responses.intake.take_delivery_batch`)."""
    return intake.take_delivery_batch(factory, config, raws, _apply, now=now)


def take_inbound_sms(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    raw: RawWebhook,
    *,
    now: datetime | None = None,
) -> Handled:
    """Store an inbound SMS and apply it in one transaction
    (:func:`dispatch.responses.intake.take_inbound_sms`)."""
    return intake.take_inbound_sms(factory, config, raw, _apply, now=now)


def replay_unhandled_webhooks(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    *,
    now: datetime | None = None,
    older_than: timedelta = timedelta(minutes=1),
    limit: int = 500,
    budget_seconds: float = 2.0,
) -> ReplayReport:
    """Apply stored webhooks not applied yet, once their back-off has passed
    (:func:`dispatch.responses.store.replay_unhandled_webhooks`)."""
    return store.replay_unhandled_webhooks(
        factory,
        config,
        _apply,
        now=now,
        older_than=older_than,
        limit=limit,
        budget_seconds=budget_seconds,
        together=_TOGETHER,
    )
