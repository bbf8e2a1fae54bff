"""The one error a webhook parser raises on a payload it cannot read.

Signature checks never raise (they answer ``False``); parsers raise :class:`WebhookPayloadError`
when a *verified* payload is not what the provider documents (not JSON, not an array, a status
callback without ``MessageSid``). It subclasses :class:`ValueError`, so callers may catch either.
Its message never quotes the payload (which carries phone numbers and email addresses).
"""

from __future__ import annotations

__all__ = ["WebhookPayloadError"]


class WebhookPayloadError(ValueError):
    """A provider's webhook payload is malformed; ``provider`` says whose."""

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
