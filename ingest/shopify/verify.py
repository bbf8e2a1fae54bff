"""Shopify's webhook signature: ``X-Shopify-Hmac-Sha256`` is the base64 HMAC-SHA256 of the raw
body under the app's (or the store's) webhook secret."""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["HMAC_HEADER", "sign", "verify"]

HMAC_HEADER = "X-Shopify-Hmac-Sha256"


def sign(secret: str, body: bytes) -> str:
    """The header value Shopify sends with ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify(secret: str | None, body: bytes, header: str | None) -> bool:
    """Whether ``header`` signs exactly ``body``; fails closed without a secret or a header.
    The comparison takes the same time wherever the first difference is."""
    if not secret or not header:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())
