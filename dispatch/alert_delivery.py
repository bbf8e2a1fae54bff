"""Delivering one detractor alert: what it says, how it is signed, and one attempt per target.

:func:`deliver` claims the row (:func:`dispatch.alerts.claim`), reads what the alert says from
the survey *now* (an alert whose customer has been erased is cancelled instead: nothing about
them is sent), makes one attempt and records its outcome (:func:`dispatch.alerts.finish`).

**Webhook**: a JSON ``POST`` (:func:`alert_body`) with ``X-NPS-Signature: t=<unix>,v1=<hex>``,
the HMAC-SHA256 under ``NPS_ALERT_SIGNING_SECRET`` of ``"<t>.<body>"``, over exactly the bytes
sent (:func:`signature_header`; :func:`verify_signature` is the receiver's check, constant-time,
with a freshness window), and ``X-NPS-Alert-Id``. A 2xx answer is delivered; a 5xx, 408, 429
(``Retry-After`` honoured, in seconds or as a date, at most an hour), a time-out or a connection
error is tried again later; any other answer (a 4xx, a redirect, which is not followed) fails
for good. Delivery is at least once: every attempt carries the alert's id, in the header and as
the body's ``id``, by which a receiver recognises a repeat (the body is read anew at each
attempt, so a comment that came meanwhile is in the later one).

**Email**: through the email channel (SendGrid, or the console without a provider), to the
configured address. Only an answer proving nothing was sent (a 429, a refused connection) is
tried again: a mail that may have gone out is not sent twice.

Logs name the alert, its target and the outcome: never the comment, the address or the URL's
path (a hook's path is often its secret; httpx's own request line shows only its host here).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from channels.base import (
    Channel,
    ChannelName,
    OutboundMessage,
    OutcomeUnknownError,
    PermanentSendError,
    SendError,
    TransientSendError,
)
from channels.http import parse_retry_after
from config import OperatorConfig
from dispatch.alerts import CUSTOMER_ERASED, SCORE_CHANGED, Claim, Outcome, claim, finish
from dispatch.consent import customer_erased
from models import Order, Survey

__all__ = [
    "ALERT_ID_HEADER",
    "SIGNATURE_HEADER",
    "AlertContent",
    "Attempt",
    "alert_body",
    "deliver",
    "email_message",
    "post_webhook",
    "send_email",
    "signature_header",
    "verify_signature",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-NPS-Signature"
ALERT_ID_HEADER: Final = "X-NPS-Alert-Id"
#: Email alerts carry no survey id in the provider's custom args: their events must not be
#: taken for the customer's invitation.
_NO_SURVEY: Final = 0


@dataclass(frozen=True, slots=True)
class AlertContent:
    """What one alert says, read from the survey when it is delivered."""

    alert_id: int
    survey_id: int
    order_id: str
    channel: str
    score: int
    comment: str | None
    answered_at: datetime | None
    shop: str


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt's outcome, as :func:`dispatch.alerts.finish` records it."""

    outcome: Outcome
    error: str | None = None
    retry_after: timedelta | None = None


# --------------------------------------------------------------------------------------------
# Content and signature
# --------------------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alert_body(content: AlertContent) -> bytes:
    """The webhook's JSON body, compact UTF-8 (the bytes that are signed)."""
    payload: dict[str, Any] = {
        "type": "detractor_alert",
        "id": content.alert_id,
        "survey_id": content.survey_id,
        "order_id": content.order_id,
        "channel": content.channel,
        "score": content.score,
        "band": "detractor",
        "comment": content.comment,
        "answered_at": _iso(content.answered_at),
        "shop": content.shop,
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    now: datetime,
    tolerance: timedelta = timedelta(minutes=5),
) -> bool:
    """What a receiver checks: a ``v1`` matching the body and a timestamp within ``tolerance``
    of ``now`` (a replayed old request fails)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    stamp = (fields.get("t") or [""])[0]
    if not (stamp.isascii() and stamp.isdigit()):
        return False  # int() would take "+1", "1_0" and other scripts' digits
    timestamp = int(stamp)
    if abs(now.timestamp() - timestamp) > tolerance.total_seconds():
        return False
    expected = _mac(secret, timestamp, body).encode()
    # Compared as bytes: compare_digest refuses str with other than ASCII (a forged header).
    return any(
        hmac.compare_digest(expected, given.encode("utf-8", "replace"))
        for given in fields.get("v1", [])
    )


def _read_content(session: Session, claimed: Claim, config: OperatorConfig) -> AlertContent | str:
    """The alert's content, or why it is no longer to be sent."""
    survey = session.get(Survey, claimed.survey_id)
    if survey is None or survey.score is None:
        return "survey has no score"
    if config.survey.bands.band_of(survey.score) != "detractor":
        return SCORE_CHANGED
    if claimed.target not in config.alerts.targets():
        return "target no longer configured"
    # Read under the customer's share lock, as every writer does: an erasure committed before
    # this claim cancels the alert; one waiting for the lock comes after the alert is read.
    if customer_erased(session, survey.customer_id):
        return CUSTOMER_ERASED
    order_id = session.scalar(select(Order.external_id).where(Order.id == survey.order_id))
    return AlertContent(
        alert_id=claimed.alert_id,
        survey_id=survey.id,
        order_id=order_id or "",
        channel=survey.channel,
        score=survey.score,
        comment=survey.comment,
        answered_at=survey.answered_at,
        shop=config.survey.shop_name,
    )


# --------------------------------------------------------------------------------------------
# One attempt per target
# --------------------------------------------------------------------------------------------

_posting = threading.local()


class _HookPathHidden(logging.Filter):
    """httpx logs every request with its whole URL; during an alert's POST (this thread only)
    the URL is shown as its scheme and host."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_posting, "active", False) and isinstance(record.args, tuple):
            record.args = tuple(
                f"{arg.scheme}://{arg.host}/[path hidden]" if isinstance(arg, httpx.URL) else arg
                for arg in record.args
            )
        return True


logging.getLogger("httpx").addFilter(_HookPathHidden())


@contextmanager
def _path_hidden() -> Iterator[None]:
    _posting.active = True
    try:
        yield
    finally:
        _posting.active = False


#: The longest ``Retry-After`` a receiver can ask for.
MAX_RETRY_AFTER: Final = timedelta(hours=1)


def _retry_after(response: httpx.Response, now: datetime) -> timedelta | None:
    """The receiver's ``Retry-After`` (seconds or an HTTP date), at most :data:`MAX_RETRY_AFTER`."""
    seconds = parse_retry_after(response.headers.get("Retry-After"), now)
    return None if seconds is None else min(timedelta(seconds=seconds), MAX_RETRY_AFTER)


def post_webhook(
    http: httpx.Client, url: str, secret: str | None, content: AlertContent, now: datetime
) -> Attempt:
    """One signed POST of ``content`` to ``url``; unsigned (no secret) nothing is sent."""
    if not secret:
        log.error(
            "ALERT detractor alert %s: NPS_ALERT_SIGNING_SECRET is not set; not sent unsigned",
            content.alert_id,
        )
        return Attempt("retry", "NPS_ALERT_SIGNING_SECRET not set")
    body = alert_body(content)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "nps-dispatch",
        SIGNATURE_HEADER: signature_header(secret, int(now.timestamp()), body),
        ALERT_ID_HEADER: str(content.alert_id),
    }
    try:
        # Only the status and headers are read: the receiver's body is not ours to wait for
        # (one that never ends would hold this worker thread, and the others' work, for good).
        with _path_hidden(), http.stream("POST", url, content=body, headers=headers) as response:
            status, retry_after = response.status_code, _retry_after(response, now)
    except httpx.HTTPError as exc:
        return Attempt("retry", type(exc).__name__)
    if 200 <= status < 300:
        return Attempt("delivered")
    if status >= 500 or status in (408, 429):
        return Attempt("retry", f"HTTP {status}", retry_after)
    if 300 <= status < 400:
        return Attempt("failed", f"HTTP {status} (redirects are not followed)")
    return Attempt("failed", f"HTTP {status}")


def email_message(content: AlertContent, to: str) -> OutboundMessage:
    """The alert as a plain-text email to ``to``, with no survey id for the provider's events."""
    lines = [
        f"A customer of {content.shop} answered {content.score} out of 10.",
        "",
        f"Order: {content.order_id}",
        f"Channel: {content.channel}",
        f"Answered: {_iso(content.answered_at)}",
        f"Survey: {content.survey_id}",
        "",
        "Comment:",
        content.comment if content.comment else "(none)",
    ]
    return OutboundMessage(
        survey_id=_NO_SURVEY,
        channel=ChannelName.email,
        to=to,
        subject=f"Detractor: {content.score}/10 on order {content.order_id}",
        body_text="\n".join(lines),
        to_staff=True,
    )


def send_email(channel: Channel | None, to: str, content: AlertContent) -> Attempt:
    """One attempt through the email channel: retried only when nothing can have been sent."""
    if channel is None:
        return Attempt("failed", "email channel off (its provider is not configured)")
    try:
        channel.send(email_message(content, to))
    except TransientSendError as exc:
        wait = exc.retry_after_seconds
        return Attempt(
            "retry",
            f"{type(exc).__name__} {exc.code or ''}".strip(),
            timedelta(seconds=wait) if wait else None,
        )
    except OutcomeUnknownError as exc:
        return Attempt("failed", f"outcome unknown ({exc.code or 'no code'}): not sent again")
    except PermanentSendError as exc:
        return Attempt("failed", f"refused by the provider ({exc.code or 'no code'})")
    except SendError as exc:
        return Attempt("failed", type(exc).__name__)
    return Attempt("delivered")


def deliver(
    factory: sessionmaker[Session],
    alert_id: int,
    config: OperatorConfig,
    *,
    secret: str | None,
    http: httpx.Client,
    email_channel: Channel | None,
    clock: Callable[[], datetime],
) -> str:
    """Claim, attempt once, record. Returns the outcome (``skipped`` when the row was not
    ``queued``: a duplicate message sends nothing)."""
    with factory() as session, session.begin():
        claimed = claim(session, alert_id, clock())
        if claimed is None:
            log.info("detractor alert %s: not queued, nothing to send", alert_id)
            return "skipped"
        content = _read_content(session, claimed, config)
        if isinstance(content, str):
            outcome = finish(session, claimed, "cancelled", clock(), error=content)
            log.info("detractor alert %s: cancelled (%s)", alert_id, content)
            return outcome
    alerts = config.alerts
    if claimed.target == "webhook" and alerts.detractor_webhook is not None:
        attempt = post_webhook(http, alerts.detractor_webhook, secret, content, clock())
    elif claimed.target == "email" and alerts.detractor_email is not None:
        attempt = send_email(email_channel, alerts.detractor_email, content)
    else:  # pragma: no cover - _read_content cancels an unconfigured target
        attempt = Attempt("failed", "target not configured")
    with factory() as session, session.begin():
        outcome = finish(
            session,
            claimed,
            attempt.outcome,
            clock(),
            error=attempt.error,
            retry_after=attempt.retry_after,
        )
    log.info(
        "detractor alert %s (%s), attempt %d: %s%s",
        alert_id,
        claimed.target,
        claimed.attempt,
        outcome,
        f" ({attempt.error})" if attempt.error else "",
    )
    return outcome
