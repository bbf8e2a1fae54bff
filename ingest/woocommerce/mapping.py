"""WooCommerce order webhooks (``order.created``, ``order.updated``) to our shop events.

The body is the order as the WooCommerce REST API (``wc/v3``) shows it; what it means is its
``status``:

- a status in ``[woocommerce] purchase_statuses`` (``processing``, ``completed``):
  ``purchase.completed``;
- ``completed``: also ``order.fulfilled``;
- ``cancelled``: ``order.cancelled``; ``refunded``: ``order.refunded``;
- any other (``pending``, ``on-hold``, ``failed``...): nothing.

WooCommerce sends ``order.updated`` on every change of an order, so each event id is the order's
and the event's (``woocommerce:order:<id>:purchase``): the same order updated again gives the
same events, which are duplicates. Order and customer ids are WooCommerce's numbers in decimal;
a guest order (``customer_id`` 0) gets a stable ``woocommerce-guest:`` id derived from its
billing email address or phone number.

WooCommerce keeps no marketing consent of its own. When the checkout writes one into the order's
``meta_data`` (a consent checkbox plugin), ``[woocommerce] email_consent_meta_key`` /
``sms_consent_meta_key`` name the key; ``yes``, ``1``, ``true`` or ``on`` is a grant, any other
value a refusal, and no key no consent evidence (the purchase is then skipped ``no_consent``
unless consent came another way).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from config import OperatorConfig, WooCommerceConfig
from ingest.platforms import (
    Body,
    Delivery,
    Mapped,
    Unmappable,
    as_object,
    given,
    guest_by_email,
    guest_by_phone,
    line_items,
    numeric_id,
    text,
    timestamp,
    total,
    webhook_body,
)

__all__ = ["PLATFORM", "TOPICS", "handles", "map_webhook", "subject_of"]

PLATFORM: Final = "woocommerce"
TOPICS: Final = frozenset({"order.created", "order.updated"})
GUEST_PREFIX: Final = "woocommerce-guest:"
_TRUE: Final = frozenset({"yes", "1", "true", "on"})


def handles(topic: str) -> bool:
    return topic in TOPICS


def _customer_id(body: Body) -> str:
    raw = body.get("customer_id")
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return str(raw)
    if isinstance(raw, str) and raw.strip().isdigit() and int(raw) > 0:
        return str(int(raw))
    billing = as_object(body.get("billing"))
    email = text(billing.get("email"), 320)
    phone = text(billing.get("phone"), 40)
    if email:
        return guest_by_email(GUEST_PREFIX, email)
    if phone:
        return guest_by_phone(GUEST_PREFIX, phone, text(billing.get("country"), 2))
    return f"{GUEST_PREFIX}order:{numeric_id(body.get('id'), 'id')}"


def subject_of(delivery: Delivery) -> str | None:
    """The customer an order webhook is about, for the raw row's subject key; never raises."""
    body = as_object(delivery.body)
    try:
        return _customer_id(body)
    except Unmappable:
        return None


def map_webhook(delivery: Delivery, config: OperatorConfig) -> Mapped:
    """The events of one order webhook; raises :class:`Unmappable` with the reason."""
    body = webhook_body(delivery, TOPICS)
    options = config.woocommerce
    order_id = numeric_id(body.get("id"), "id")
    status = body.get("status")
    if not isinstance(status, str) or not status:
        raise Unmappable("status: missing")
    events: list[dict[str, Any]] = []
    if status in options.purchase_statuses:
        events.append(_purchase(body, order_id, options))
    if status == "completed":
        events.append(_order_event(body, order_id, "fulfilled", "date_completed_gmt"))
    elif status in ("cancelled", "refunded"):
        events.append(_order_event(body, order_id, status, "date_modified_gmt"))
    if not events:
        return Mapped(result=f"ignored: status {status}"[:40])
    return Mapped(events=tuple(events))


def _when(body: Body, *keys: str) -> str:
    for key in keys:
        if body.get(key):
            return timestamp(body.get(key), key, naive_is_utc=True)
    raise Unmappable(f"{keys[0]}: missing")


def _order_event(body: Body, order_id: str, kind: str, time_key: str) -> dict[str, Any]:
    return {
        "type": f"order.{kind}",
        "event_id": f"woocommerce:order:{order_id}:{kind}",
        "occurred_at": _when(body, time_key, "date_modified_gmt", "date_created_gmt"),
        "order_id": order_id,
    }


def _consent(body: Body, options: WooCommerceConfig, at: str) -> dict[str, Any] | None:
    keys = {"email": options.email_consent_meta_key, "sms": options.sms_consent_meta_key}
    meta = {
        entry.get("key"): entry.get("value")
        for entry in body.get("meta_data") or ()
        if isinstance(entry, Mapping)
    }
    given = {
        channel: str(meta[key]).strip().lower() in _TRUE
        for channel, key in keys.items()
        if key is not None and key in meta
    }
    if not given:
        return None
    source = "woocommerce checkout: " + ", ".join(str(keys[channel]) for channel in given)
    return {**given, "source": source[:120], "captured_at": at}


def _purchase(body: Body, order_id: str, options: WooCommerceConfig) -> dict[str, Any]:
    billing = as_object(body.get("billing"))
    shipping = as_object(body.get("shipping"))
    bought = _when(body, "date_paid_gmt", "date_created_gmt")
    person = {
        "id": _customer_id(body),
        "email": text(billing.get("email"), 320),
        "phone": text(billing.get("phone"), 40),
        "first_name": text(billing.get("first_name"), 120),
        "country": text(shipping.get("country"), 2) or text(billing.get("country"), 2),
    }
    items = line_items(body)
    event: dict[str, Any] = {
        "type": "purchase.completed",
        "event_id": f"woocommerce:order:{order_id}:purchase",
        "occurred_at": bought,
        "order_id": order_id,
        "customer": given(person),
        "total": total(body, "total"),
        "items": items,
        "sales_channel": text(body.get("created_via"), 32),
    }
    consent = _consent(body, options, bought)
    if consent is not None:
        event["consent"] = consent
    return event
