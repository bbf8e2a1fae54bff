"""Twilio send errors -> the normalised :mod:`channels.base` errors, by lookup table.

Twilio's message create has no idempotency key, so the question for every answer is whether it
proves that no message was created:

- 429 (or code 20429): refused before creating anything; transient, honouring ``Retry-After``.
- 4xx with a Twilio ``code``: a validation error, nothing created. The codes below are about the
  recipient and permanent; 21610 (the recipient replied STOP) also revokes consent. Any other 4xx
  is permanent too, except 401/403 (our credentials or account permissions: an operator's
  mistake, not the recipient's, so the survey waits and retries).
- 408, every 5xx and anything else that is not a 4xx: Twilio (or a proxy in front of it) may have
  created the message before the error, so the outcome is unknown
  (:class:`OutcomeUnknownError`), whatever the body says.

Transport errors: a connect error means the request never left (transient); a failure after the
request was written (read timeout, dropped connection) means Twilio may have created the message,
so it is :class:`OutcomeUnknownError` as well.
"""

from __future__ import annotations

from typing import Final

import httpx

from channels.base import (
    OutcomeUnknownError,
    PermanentSendError,
    SendError,
    TransientSendError,
)
from channels.http import NOT_SENT_ERRORS, parse_retry_after
from channels.masking import mask_text

PROVIDER: Final = "twilio"

#: Codes about the recipient: sending again cannot succeed.
PERMANENT_CODES: Final[dict[int, str]] = {
    21211: "invalid 'To' phone number",
    21408: "no permission to send to the region of the 'To' number",
    21612: "the 'To' number is not reachable from this sender",
    21614: "'To' number is not SMS-capable",
    21635: "'To' number is a landline",
}

#: Codes that say the recipient opted out: permanent and evidence of a consent revocation.
CONSENT_REVOKING_CODES: Final[dict[int, str]] = {
    21610: "the recipient has unsubscribed (replied STOP)",
}

#: Codes of a refusal that created nothing and is worth retrying later.
TRANSIENT_CODES: Final[dict[int, str]] = {
    20429: "too many requests",
    # The sender's queue at Twilio is full: the message was refused, not created, and the same
    # request succeeds once the queue has drained.
    21611: "the 'From' number has exceeded the maximum number of queued messages",
}

#: 4xx statuses after which the message may exist (like every status outside 4xx): a request
#: timeout may be answered by a proxy while Twilio carries on with the request.
AMBIGUOUS_STATUSES: Final[frozenset[int]] = frozenset({408})

#: HTTP statuses that are our configuration, not the recipient: retried (and alerting) rather
#: than ending every survey as ``failed``.
CONFIGURATION_STATUSES: Final[frozenset[int]] = frozenset({401, 403})


def from_http_error(
    status: int,
    code: int | None,
    message: str,
    retry_after: str | None = None,
) -> SendError:
    """The normalised error for an HTTP error answer of Twilio's message create."""
    text = mask_text(message or f"HTTP {status}")
    code_str = str(code) if code is not None else None
    if not 400 <= status < 500 or status in AMBIGUOUS_STATUSES:
        # Only a 4xx proves the request was refused; anything else may have created it.
        return OutcomeUnknownError(
            f"HTTP {status}, the message may have been created: {text}",
            code=code_str,
            provider=PROVIDER,
        )
    if code is not None and code in CONSENT_REVOKING_CODES:
        return PermanentSendError(
            f"{CONSENT_REVOKING_CODES[code]}: {text}",
            code=code_str,
            provider=PROVIDER,
            revokes_consent=True,
        )
    if code is not None and code in PERMANENT_CODES:
        return PermanentSendError(
            f"{PERMANENT_CODES[code]}: {text}", code=code_str, provider=PROVIDER
        )
    if code in TRANSIENT_CODES or status == 429:
        return TransientSendError(
            f"HTTP {status}: {text}",
            code=code_str,
            provider=PROVIDER,
            retry_after_seconds=parse_retry_after(retry_after),
        )
    if status in CONFIGURATION_STATUSES:
        return TransientSendError(
            f"HTTP {status} (check the Twilio credentials and account): {text}",
            code=code_str,
            provider=PROVIDER,
            retry_after_seconds=parse_retry_after(retry_after),
        )
    return PermanentSendError(f"HTTP {status}: {text}", code=code_str, provider=PROVIDER)


def from_transport_error(exc: httpx.TransportError) -> SendError:
    """Transient when the request never left; unknown outcome once it may have been sent."""
    kind = type(exc).__name__
    if isinstance(exc, NOT_SENT_ERRORS):
        return TransientSendError(f"{kind}: the request did not reach Twilio", provider=PROVIDER)
    return OutcomeUnknownError(
        f"{kind} after the request was sent: the message may have been created",
        provider=PROVIDER,
    )
