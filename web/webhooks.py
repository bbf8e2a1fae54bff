"""Provider webhooks: ``POST /webhooks/twilio/status``, ``/webhooks/twilio/inbound``,
``/webhooks/sendgrid/events``.

Each route, in this order: read the body under a cap; **verify** the signature (fail closed: 403
``signature_invalid``, counted in ``nps_webhook_verification_failures``, and nothing written,
also when the provider's secret is not configured); parse (400 ``invalid_payload``); **store**
the raw event keyed by the provider's id and answer, **applying** it in the same transaction
only when that is cheap or must not wait (``dispatch.responses.intake``): a status callback
that only advances a message's delivery state, an inbound SMS (its answer is the reply, and a
STOP must hold before the next send), a SendGrid consent event. Everything else stays stored
and is applied by the scheduler's next replay pass. A failure while applying leaves the raw row
unhandled for the replay and answers 500 ``internal_error``, so a provider that retries
(SendGrid does, for 24 hours) brings it back too; its other events are duplicates by then.
Error answers are in the shape of :mod:`web.errors`.

Twilio signs the URL it called: it is rebuilt from ``NPS_PUBLIC_BASE_URL`` plus the request's
path and raw query, never from the request's own host (a proxy changes it). SendGrid signs
timestamp + raw body; a timestamp older than 10 minutes is refused.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from channels.base import RawWebhook
from channels.sendgrid_email.webhooks import SIGNATURE_HEADER as SENDGRID_SIGNATURE
from channels.sendgrid_email.webhooks import TIMESTAMP_HEADER as SENDGRID_TIMESTAMP
from channels.sendgrid_email.webhooks import raw_sendgrid_events, verify_sendgrid_signature
from channels.twilio_sms.webhooks import SIGNATURE_HEADER as TWILIO_SIGNATURE
from channels.twilio_sms.webhooks import (
    public_url,
    raw_twilio_inbound,
    raw_twilio_status,
    twiml_message,
    verify_twilio_signature,
)
from channels.webhook_errors import WebhookPayloadError
from dispatch import responses
from dispatch.responses.intake_group import take_delivery_events
from dispatch.responses.intake_rows import Taken
from logs.metrics import WEBHOOK_VERIFICATION_FAILURES
from models import utcnow
from web.answer_pages import sms_reply_text
from web.deps import runtime_of
from web.errors import json_error
from web.limits import DEFAULT_MAX_BODY
from web.openapi import error_responses
from web.ratelimit import read_limited_body
from web.webhook_groups import AsyncGroups

__all__ = ["SENDGRID_MAX_BODY", "TWILIO_MAX_BODY", "router"]

log = logging.getLogger(__name__)
router = APIRouter()

TWILIO_MAX_BODY = 64 * 1024  # an inbound SMS of 1600 characters plus Twilio's fields, encoded
SENDGRID_MAX_BODY = DEFAULT_MAX_BODY  # SendGrid batches up to ~768 KB

NOT_APPLIED = "stored, not applied yet because of an error on our side; it is applied again later"
TWILIO_DOC: dict[str, Any] = {
    "security": [{"twilioSignature": []}],
    "responses": error_responses(400, 403, 413, 500),
}
SENDGRID_DOC: dict[str, Any] = {
    "security": [{"sendgridSignature": []}],
    "responses": error_responses(400, 403, 413, 500),
}


#: The status callbacks of concurrent requests, stored in shared transactions: one group
#: committer per session factory (one per database the app runs on).
_STATUS_GROUPS: weakref.WeakKeyDictionary[Any, AsyncGroups[RawWebhook, Taken]] = (
    weakref.WeakKeyDictionary()
)


def _status_groups(factory: Any) -> AsyncGroups[RawWebhook, Taken]:
    groups = _STATUS_GROUPS.get(factory)
    if groups is None:
        # The committer holds its factory weakly: a strong reference in the dictionary's value
        # would keep its own weak key alive, and with it every factory the process ever used.
        held = weakref.ref(factory)

        def take(raws: list[RawWebhook]) -> list[Taken]:
            live = held()
            if live is None:
                raise RuntimeError("the database of these status callbacks was closed")
            return take_delivery_events(live, raws)

        groups = _STATUS_GROUPS[factory] = AsyncGroups(take)
    return groups


def _forbidden(source: str, route: str) -> Response:
    WEBHOOK_VERIFICATION_FAILURES.labels(source=source).inc()
    log.warning("%s %s webhook refused: missing, invalid or stale signature", source, route)
    return json_error(
        403, "signature_invalid", "signature check failed: missing, invalid or stale signature"
    )


def _malformed(exc: WebhookPayloadError) -> Response:
    return json_error(400, "invalid_payload", str(exc))


async def _verified_twilio_form(request: Request) -> list[tuple[str, str]] | None:
    """Every POSTed (name, value) pair if Twilio's signature holds, else ``None``."""
    body = await read_limited_body(request, TWILIO_MAX_BODY)
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=500
        )
    except (UnicodeDecodeError, ValueError):
        return None
    runtime = runtime_of(request)
    url = public_url(
        runtime.settings.public_base_url,
        request.url.path,
        request.scope.get("query_string", b"").decode("latin-1"),
    )
    token = runtime.settings.env.get("TWILIO_AUTH_TOKEN", "")
    if not verify_twilio_signature(token, url, pairs, request.headers.get(TWILIO_SIGNATURE)):
        return None
    return pairs


@router.post("/webhooks/twilio/status", openapi_extra=TWILIO_DOC)
async def twilio_status(request: Request) -> Response:
    pairs = await _verified_twilio_form(request)
    if pairs is None:
        return _forbidden("twilio", "status")
    runtime = runtime_of(request)
    query = request.scope.get("query_string", b"").decode("latin-1")
    try:
        raw = raw_twilio_status(dict(pairs), query)
    except WebhookPayloadError as exc:
        return _malformed(exc)
    # Stored (and applied when it only advances the message) before the answer, in one
    # transaction with the callbacks of the requests arriving meanwhile; an error storing the
    # group propagates as a 500 to each of its requests, so Twilio's retry brings them back.
    await _status_groups(runtime.factory).submit(raw)
    return Response(status_code=204)


@router.post("/webhooks/twilio/inbound", openapi_extra=TWILIO_DOC)
async def twilio_inbound(request: Request) -> Response:
    pairs = await _verified_twilio_form(request)
    if pairs is None:
        return _forbidden("twilio", "inbound")
    runtime = runtime_of(request)
    try:
        raw = raw_twilio_inbound(dict(pairs))
    except WebhookPayloadError as exc:
        return _malformed(exc)
    handled = await run_in_threadpool(
        responses.take_inbound_sms, runtime.factory, runtime.config, raw
    )
    if handled.status == "failed":
        return json_error(500, "internal_error", NOT_APPLIED)
    # A duplicate delivery gets no second reply: the customer must not be texted twice.
    text = sms_reply_text(handled.reply, runtime.config) if handled.reply else None
    return Response(twiml_message(text), media_type="application/xml")


@router.post("/webhooks/sendgrid/events", openapi_extra=SENDGRID_DOC)
async def sendgrid_events(request: Request) -> Response:
    body = await read_limited_body(request, SENDGRID_MAX_BODY)
    runtime = runtime_of(request)
    key = runtime.settings.env.get("SENDGRID_WEBHOOK_PUBLIC_KEY", "")
    if not verify_sendgrid_signature(
        key,
        body,
        request.headers.get(SENDGRID_SIGNATURE),
        request.headers.get(SENDGRID_TIMESTAMP),
        utcnow(),
    ):
        return _forbidden("sendgrid", "events")
    try:
        raws = raw_sendgrid_events(body)
    except WebhookPayloadError as exc:
        return _malformed(exc)
    results = await run_in_threadpool(
        responses.take_delivery_batch, runtime.factory, runtime.config, raws
    )
    counts = {
        "received": len(results),
        "applied": sum(r.status == "applied" for r in results),
        "stored": sum(r.status == "stored" for r in results),
        "duplicates": sum(r.status == "duplicate" for r in results),
        "failed": sum(r.status == "failed" for r in results),
    }
    if counts["failed"]:
        return json_error(500, "internal_error", NOT_APPLIED, extra=counts)
    return JSONResponse(counts)
