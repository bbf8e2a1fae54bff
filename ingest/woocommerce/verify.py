"""WooCommerce's webhook signature: ``X-WC-Webhook-Signature`` is the base64 HMAC-SHA256 of the
raw body under the webhook's secret. The ping WooCommerce sends when a webhook is saved is a
form post ``webhook_id=<n>`` with no signature at all (:func:`is_ping`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

__all__ = ["SIGNATURE_HEADER", "is_ping", "sign", "verify"]

SIGNATURE_HEADER = "X-WC-Webhook-Signature"
_PING = re.compile(rb"webhook_id=\d{1,20}")


def sign(secret: str, body: bytes) -> str:
    """The header value WooCommerce sends with ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify(secret: str | None, body: bytes, header: str | None) -> bool:
    """Whether ``header`` signs exactly ``body``; fails closed without a secret or a header."""
    if not secret or not header:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


def is_ping(body: bytes, header: str | None) -> bool:
    """The unsigned ``webhook_id=<n>`` WooCommerce posts once to test a new webhook's URL."""
    return header is None and _PING.fullmatch(body.strip()) is not None
