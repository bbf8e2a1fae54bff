"""Every provider webhook we store, by the ``source`` name its raw rows carry.

A new provider adds its folder under ``channels/`` (a route's raw-row builder and a
:class:`~channels.base.WebhookSource` per kind of webhook) and its sources to :data:`_SOURCES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from channels.base import WebhookSource
from channels.sendgrid_email import webhooks as sendgrid
from channels.twilio_sms import webhooks as twilio

__all__ = ["WEBHOOK_SOURCES", "delivery_rules"]

_SOURCES: Final[tuple[WebhookSource, ...]] = (
    twilio.STATUS_CALLBACKS,
    twilio.INBOUND_SMS,
    sendgrid.EVENTS,
)

WEBHOOK_SOURCES: Final[Mapping[str, WebhookSource]] = {s.name: s for s in _SOURCES}
"""Each stored webhook source by its name (``inbound_events.source``)."""


def delivery_rules(provider: str) -> WebhookSource | None:
    """A source of ``provider``'s delivery events (its channel and delivery-state order), or
    ``None`` for a provider we take no webhooks from."""
    return next((s for s in _SOURCES if s.provider == provider), None)
