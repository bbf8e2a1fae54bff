"""SendGrid ``/v3/mail/send`` errors -> the normalised :mod:`channels.base` errors.

SendGrid's Mail Send takes no idempotency key, so the question for every answer is whether it
proves that the mail was not accepted:

- 429: refused before accepting anything; transient, honouring ``Retry-After``.
- 401/403: our API key or sender verification (an operator's mistake, not the recipient's):
  transient, so the survey waits instead of failing.
- any other 4xx: a validation error, permanent, reported with SendGrid's own error messages from
  the JSON body, scrubbed of addresses.
- 408, every 5xx and anything else that is not a 4xx: SendGrid (or a proxy in front of it) may
  have queued the mail before the error, so the outcome is unknown
  (:class:`OutcomeUnknownError`) and the survey waits for SendGrid's events.

A connect error never reached SendGrid (transient); a failure after the request was written may
have queued the mail (:class:`OutcomeUnknownError`).
"""

from __future__ import annotations

import json
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

PROVIDER: Final = "sendgrid"

#: HTTP statuses of a refusal that accepted nothing and is worth retrying later.
TRANSIENT_STATUSES: Final[frozenset[int]] = frozenset({429})

#: 4xx statuses after which the mail may have been accepted (like every status outside 4xx): a
#: request timeout may be answered by a proxy while SendGrid carries on with the request.
AMBIGUOUS_STATUSES: Final[frozenset[int]] = frozenset({408})

#: HTTP statuses that are our configuration (API key, sender identity), not the recipient.
CONFIGURATION_STATUSES: Final[frozenset[int]] = frozenset({401, 403})


def error_messages(body: str) -> str:
    """SendGrid's ``{"errors": [{"message", "field"}]}`` as one line, without any address."""
    try:
        payload = json.loads(body)
    except ValueError:
        return ""
    parts: list[str] = []
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if isinstance(errors, list):
        for item in errors:
            if not isinstance(item, dict):
                continue
            text = str(item.get("message") or "").strip()
            field = item.get("field")
            if field:
                text = f"{text} (field {field})" if text else f"field {field}"
            if text:
                parts.append(text)
    return mask_text("; ".join(parts))


def from_response(response: httpx.Response) -> SendError:
    status = response.status_code
    detail = error_messages(response.text) or response.reason_phrase or "error"
    message = f"HTTP {status}: {detail}"
    code = str(status)
    if not 400 <= status < 500 or status in AMBIGUOUS_STATUSES:
        return OutcomeUnknownError(
            f"{message}: the mail may have been accepted", code=code, provider=PROVIDER
        )
    if status in TRANSIENT_STATUSES:
        return TransientSendError(
            message,
            code=code,
            provider=PROVIDER,
            retry_after_seconds=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status in CONFIGURATION_STATUSES:
        return TransientSendError(
            f"{message} (check SENDGRID_API_KEY and the verified sender)",
            code=code,
            provider=PROVIDER,
        )
    return PermanentSendError(message, code=code, provider=PROVIDER)


def from_transport_error(exc: httpx.HTTPError) -> SendError:
    """Transient when the request never left; unknown outcome once it may have been sent (any
    other transport error, or an answer that could not be read)."""
    kind = type(exc).__name__
    if isinstance(exc, NOT_SENT_ERRORS):
        return TransientSendError(f"{kind}: the request did not reach SendGrid", provider=PROVIDER)
    return OutcomeUnknownError(
        f"{kind} after the request was sent: the mail may have been accepted", provider=PROVIDER
    )
