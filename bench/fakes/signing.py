"""Webhook signatures exactly as the real providers make them.

- Twilio: ``X-Twilio-Signature`` = base64 HMAC-SHA1, keyed with the account's auth token, of the
  full URL it called followed by every POSTed parameter, sorted by name
  (``twilio.request_validator.RequestValidator.compute_signature``).
- SendGrid Signed Event Webhook: an ECDSA P-256 / SHA-256 signature of ``timestamp + body``,
  base64 DER, in ``X-Twilio-Email-Event-Webhook-Signature``, the Unix timestamp in
  ``X-Twilio-Email-Event-Webhook-Timestamp``; the receiver holds the public key (base64 DER
  SubjectPublicKeyInfo, as SendGrid's settings page shows it).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twilio.request_validator import RequestValidator

__all__ = ["SendGridSigner", "TwilioSigner"]


class TwilioSigner:
    def __init__(self, auth_token: str) -> None:
        self._validator = RequestValidator(auth_token)

    def signature(self, url: str, params: Mapping[str, str]) -> str:
        return str(self._validator.compute_signature(url, dict(params)))

    def headers(self, url: str, params: Mapping[str, str]) -> dict[str, str]:
        return {"X-Twilio-Signature": self.signature(url, params)}


class SendGridSigner:
    def __init__(self, private_key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self._key = private_key or ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> str:
        """The verification key as SendGrid shows it: base64 of the DER public key."""
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def headers(self, body: str, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self._key.sign((stamp + body).encode(), ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
            "Content-Type": "application/json",
        }
