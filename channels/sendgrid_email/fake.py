"""SendGrid as our webhooks see it, for the demo, the chaos run and the tests: Event Webhook
batches shaped and signed exactly as SendGrid sends them.

The Signed Event Webhook carries an ECDSA P-256 / SHA-256 signature of ``timestamp + body``,
base64 DER, in ``X-Twilio-Email-Event-Webhook-Signature`` and the Unix timestamp in
``X-Twilio-Email-Event-Webhook-Timestamp``; the receiver holds the public key (base64 DER
SubjectPublicKeyInfo, as SendGrid's settings page shows it).
"""

from __future__ import annotations

import base64
import time
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["SendGridSigner", "event"]


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


def event(
    kind: str,
    *,
    survey_id: int,
    message_id: str,
    email: str,
    event_id: str,
    timestamp: int,
    **extra: Any,
) -> dict[str, Any]:
    """One event of an Event Webhook batch about the mail we sent for ``survey_id`` (our
    ``custom_args`` come back as top-level fields; ``sg_message_id`` extends the send's
    ``X-Message-Id``)."""
    return {
        "event": kind,
        "survey_id": str(survey_id),
        "sg_message_id": message_id,
        "sg_event_id": event_id,
        "email": email,
        "timestamp": timestamp,
        **extra,
    }
