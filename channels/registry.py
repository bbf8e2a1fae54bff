"""The active channels, from the environment (the variables are listed in the README).

SMS goes through Twilio when ``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN`` and ``TWILIO_FROM`` or
``TWILIO_MESSAGING_SERVICE_SID`` are set; email through SendGrid when ``SENDGRID_API_KEY`` and
``SENDGRID_FROM`` are set. With neither provider configured, both channels go to the console, so
everything runs with no account anywhere. With one provider configured, the other channel is off
on purpose: production must never "send" a real customer's survey to a console.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from channels.base import Channel, ChannelName
from channels.console.send import ConsoleChannel
from channels.sendgrid_email.send import DEFAULT_API_BASE as SENDGRID_DEFAULT_API_BASE
from channels.sendgrid_email.send import SendGridEmailChannel
from channels.twilio_sms.http import DEFAULT_API_BASE as TWILIO_DEFAULT_API_BASE
from channels.twilio_sms.send import TwilioSmsChannel

__all__ = ["DEFAULT_TIMEOUT", "channels_from_env", "enabled_channels"]

DEFAULT_TIMEOUT = 10.0

log = logging.getLogger(__name__)


def _get(env: Mapping[str, str], key: str) -> str | None:
    value = env.get(key)
    return value.strip() if value and value.strip() else None


def _twilio(env: Mapping[str, str]) -> Channel | None:
    sid, token = _get(env, "TWILIO_ACCOUNT_SID"), _get(env, "TWILIO_AUTH_TOKEN")
    sender, service = _get(env, "TWILIO_FROM"), _get(env, "TWILIO_MESSAGING_SERVICE_SID")
    if not (sid and token and (sender or service)):
        return None
    return TwilioSmsChannel(
        sid,
        token,
        from_number=sender,
        messaging_service_sid=service,
        api_base=_get(env, "TWILIO_API_BASE") or TWILIO_DEFAULT_API_BASE,
        timeout=DEFAULT_TIMEOUT,
    )


def _sendgrid(env: Mapping[str, str]) -> Channel | None:
    key, sender = _get(env, "SENDGRID_API_KEY"), _get(env, "SENDGRID_FROM")
    if not (key and sender):
        return None
    group = _get(env, "SENDGRID_UNSUBSCRIBE_GROUP_ID")
    try:
        group_id = int(group) if group is not None else None
    except ValueError:
        raise ValueError(
            f"SENDGRID_UNSUBSCRIBE_GROUP_ID must be an integer, not {group!r}"
        ) from None
    return SendGridEmailChannel(
        key,
        sender,
        unsubscribe_group_id=group_id,
        api_base=_get(env, "SENDGRID_API_BASE") or SENDGRID_DEFAULT_API_BASE,
        timeout=DEFAULT_TIMEOUT,
    )


def channels_from_env(env: Mapping[str, str]) -> dict[ChannelName, Channel]:
    """The channels that are on: the configured providers, or the console for both when none is."""
    configured = {ChannelName.sms: _twilio(env), ChannelName.email: _sendgrid(env)}
    if all(channel is None for channel in configured.values()):
        log.info("no provider configured: both channels print to the console")
        return {name: ConsoleChannel(name) for name in configured}
    result: dict[ChannelName, Channel] = {}
    for name, channel in configured.items():
        if channel is None:
            log.info("channel %s: off (its provider is not configured)", name)
        else:
            log.info("channel %s: %s", name, channel.provider)
            result[name] = channel
    return result


def enabled_channels(env: Mapping[str, str]) -> frozenset[str]:
    """Names of the channels that are on, without building clients (for planning)."""
    twilio = all(_get(env, k) for k in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")) and any(
        _get(env, k) for k in ("TWILIO_FROM", "TWILIO_MESSAGING_SERVICE_SID")
    )
    sendgrid = all(_get(env, k) for k in ("SENDGRID_API_KEY", "SENDGRID_FROM"))
    if not (twilio or sendgrid):
        return frozenset({ChannelName.sms.value, ChannelName.email.value})
    return frozenset(
        name
        for name, on in ((ChannelName.sms.value, twilio), (ChannelName.email.value, sendgrid))
        if on
    )
