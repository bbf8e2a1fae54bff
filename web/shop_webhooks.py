"""Shop platforms' webhooks: ``POST /webhooks/shopify`` and ``POST /webhooks/woocommerce``.

Each route, in this order: off (404) while its secret is unset; read the body under a cap;
**verify** the signature over the raw body (fail closed, constant-time compare; nothing is
written for a bad one); take only the topics we map (any other is answered 200 and logged once
per topic per process, so the platform does not disable the webhook); then store, map and
ingest (``ingest.platforms``). The answer is 200 whatever the payload held (a payload we cannot
map is a dead letter), and 500 only when applying failed on our side, so that the platform
sends it again. A ``shop/redact`` is stored and answered 200 ``queued`` at once: erasing a whole
shop is left to the scheduler, which carries it out a bounded number of customers a pass.

A bad signature is answered 401 on the Shopify route (what Shopify requires of its mandatory
privacy webhooks) and 403 on the WooCommerce route, as on the other webhooks. WooCommerce's
setup ping (an unsigned form ``webhook_id=<n>``) is answered 200 and writes nothing.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from ingest import platforms, shopify, woocommerce
from ingest.platforms import Delivery
from logs.metrics import WEBHOOK_VERIFICATION_FAILURES
from models import utcnow
from web.deps import runtime_of
from web.errors import json_error
from web.limits import DEFAULT_MAX_BODY
from web.ratelimit import read_limited_body

__all__ = ["MAX_BODY", "router"]

log = logging.getLogger(__name__)
router = APIRouter()

MAX_BODY = DEFAULT_MAX_BODY  # an order of a few hundred lines is far below

_ignored_lock = threading.Lock()
_ignored: set[tuple[str, str]] = set()


def _ignore(platform: str, topic: str) -> JSONResponse:
    """Answer a topic we do not map: 200, so the platform keeps the webhook; logged once per
    topic per process."""
    with _ignored_lock:
        first = (platform, topic) not in _ignored
        _ignored.add((platform, topic))
    if first:
        log.info("%s webhook topic %r is not taken: answered 200 and ignored", platform, topic)
    return JSONResponse({"status": "ignored", "result": f"topic {topic[:60]} not taken"})


def _refused(platform: str, status: int) -> JSONResponse:
    WEBHOOK_VERIFICATION_FAILURES.labels(source=platform).inc()
    log.warning("%s webhook refused: missing or invalid signature", platform)
    code = "unauthorized" if status == 401 else "signature_invalid"
    return json_error(status, code, "signature check failed")


def _json(body: bytes) -> Any:
    """The parsed body, or None when it is not JSON (then mapped to a dead letter)."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None


async def _receive(request: Request, adapter: platforms.Adapter, delivery: Delivery) -> Response:
    runtime = runtime_of(request)
    received = await run_in_threadpool(
        platforms.receive, runtime.factory, runtime.config, adapter, delivery
    )
    status = 500 if received.status == "failed" else 200
    return JSONResponse(received.answer(), status_code=status)


@router.post("/webhooks/shopify")
async def shopify_webhook(request: Request) -> Response:
    runtime = runtime_of(request)
    secret = runtime.settings.shopify_webhook_secret
    if not secret:
        raise HTTPException(status_code=404)
    body = await read_limited_body(request, MAX_BODY)
    if not shopify.verify(secret, body, request.headers.get(shopify.HMAC_HEADER)):
        return _refused(shopify.PLATFORM, 401)
    topic = (request.headers.get("X-Shopify-Topic") or "").strip()
    webhook_id = (request.headers.get("X-Shopify-Webhook-Id") or "").strip()
    if not topic or not webhook_id:
        return json_error(
            400, "bad_request", "X-Shopify-Topic and X-Shopify-Webhook-Id are required"
        )
    if not shopify.handles(topic, runtime.config.shopify):
        return _ignore(shopify.PLATFORM, topic)
    delivery = Delivery(
        platform=shopify.PLATFORM,
        delivery_id=webhook_id,
        topic=topic,
        shop=(request.headers.get("X-Shopify-Shop-Domain") or "").strip().lower(),
        body=_json(body),
        received_at=utcnow(),
    )
    return await _receive(request, shopify.ADAPTER, delivery)


@router.post("/webhooks/woocommerce")
async def woocommerce_webhook(request: Request) -> Response:
    runtime = runtime_of(request)
    secret = runtime.settings.woocommerce_webhook_secret
    if not secret:
        raise HTTPException(status_code=404)
    body = await read_limited_body(request, MAX_BODY)
    signature = request.headers.get(woocommerce.SIGNATURE_HEADER)
    if woocommerce.is_ping(body, signature):
        log.info("woocommerce webhook ping answered")
        return JSONResponse({"status": "pong"})
    if not woocommerce.verify(secret, body, signature):
        return _refused(woocommerce.PLATFORM, 403)
    topic = (request.headers.get("X-WC-Webhook-Topic") or "").strip()
    delivery_id = (request.headers.get("X-WC-Webhook-Delivery-ID") or "").strip()
    if not topic or not delivery_id:
        return json_error(
            400, "bad_request", "X-WC-Webhook-Topic and X-WC-Webhook-Delivery-ID are required"
        )
    if not woocommerce.handles(topic):
        return _ignore(woocommerce.PLATFORM, topic)
    source = (request.headers.get("X-WC-Webhook-Source") or "").strip().rstrip("/")
    delivery = Delivery(
        platform=woocommerce.PLATFORM,
        delivery_id=delivery_id,
        topic=topic,
        shop=source.removeprefix("https://").removeprefix("http://").lower(),
        body=_json(body),
        received_at=utcnow(),
    )
    return await _receive(request, woocommerce.ADAPTER, delivery)
