"""What a channel may offer to settle a send whose outcome is unknown, without its caller knowing
the provider.

A send left in doubt (an ambiguous answer, a lost connection) is never sent again; only the
provider's own evidence settles it. A channel offers the evidence its provider has:

- :class:`StatusCallbacks`: the provider reports each message's fate to a webhook of ours. The
  channel knows its own webhook route and names the address for one survey, which the message
  carries (``OutboundMessage.status_callback_url``).
- :class:`MessageLookup`: the provider can be asked what it created (its message log), returning
  :class:`FoundMessage` entries. Both are defined with the rest of the channel vocabulary in
  :mod:`channels.base` and offered here beside the rest of the reconciliation vocabulary.

Callers ask through :func:`status_callback_url` and :func:`message_lookup`, which answer ``None``
for a channel without that evidence (the console, an email provider whose events are signed
webhooks configured on the provider's side).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from channels.base import Channel, FoundMessage, MessageLookup

__all__ = [
    "FoundMessage",
    "MessageLookup",
    "StatusCallbacks",
    "message_lookup",
    "status_callback_url",
]


@runtime_checkable
class StatusCallbacks(Protocol):
    """A channel whose provider posts each message's status to a callback address it is given."""

    def status_callback_url(self, public_base_url: str, survey_id: int) -> str:
        """The address, under our public base URL, of this channel's status webhook for the
        message of ``survey_id``."""
        ...


def status_callback_url(
    channel: Channel | None, public_base_url: str, survey_id: int
) -> str | None:
    """The status callback address for the message of ``survey_id`` on ``channel``, or ``None``
    when the channel takes none."""
    if isinstance(channel, StatusCallbacks):
        return channel.status_callback_url(public_base_url, survey_id)
    return None


def message_lookup(channel: Channel | None) -> MessageLookup | None:
    """``channel`` as a :class:`MessageLookup` when its provider can be asked, else ``None``."""
    return channel if isinstance(channel, MessageLookup) else None
