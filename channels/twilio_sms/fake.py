"""Twilio as our webhooks see it, for the demo, the chaos run and the tests: requests shaped and
signed exactly as Twilio sends them (as dramatiq ships a stub broker, the channel ships its fake).

``X-Twilio-Signature`` is the base64 HMAC-SHA1, keyed with the account's auth token, of the full
URL Twilio called followed by every POSTed parameter sorted by name; Twilio's own
``RequestValidator.compute_signature`` computes it.
"""

from __future__ import annotations

from collections.abc import Mapping

from twilio.request_validator import RequestValidator

__all__ = ["TwilioSigner", "inbound_sms", "status_callback"]


class TwilioSigner:
    def __init__(self, auth_token: str) -> None:
        self._validator = RequestValidator(auth_token)

    def signature(self, url: str, params: Mapping[str, str]) -> str:
        return str(self._validator.compute_signature(url, dict(params)))

    def headers(self, url: str, params: Mapping[str, str]) -> dict[str, str]:
        return {"X-Twilio-Signature": self.signature(url, params)}


def status_callback(
    message_sid: str, status: str, *, to: str, sender: str, account_sid: str = "ACfake"
) -> dict[str, str]:
    """The form of a message status callback (``StatusCallback`` of the message)."""
    return {
        "MessageSid": message_sid,
        "MessageStatus": status,
        "To": to,
        "From": sender,
        "AccountSid": account_sid,
    }


def inbound_sms(
    message_sid: str, *, sender: str, to: str, body: str, account_sid: str = "ACfake"
) -> dict[str, str]:
    """The form of an incoming SMS (the number's messaging webhook)."""
    return {
        "MessageSid": message_sid,
        "From": sender,
        "To": to,
        "Body": body,
        "AccountSid": account_sid,
        "NumSegments": "1",
    }
