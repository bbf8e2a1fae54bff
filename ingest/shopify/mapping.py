"""Shopify webhook topics to our shop events (``ingest/schema.py``).

- ``orders/paid`` (and ``orders/create`` when ``[shopify] purchase_topics`` names it, for an
  order whose payment is ``paid``, ``partially_paid`` or ``authorized``): the customer's
  marketing consent, then ``purchase.completed``;
- ``fulfillments/create``, ``fulfillments/update``: ``order.fulfilled``, and ``order.delivered``
  once ``shipment_status`` is ``delivered``;
- ``orders/cancelled``: ``order.cancelled``; ``refunds/create``: ``order.refunded`` (a partial
  refund too);
- ``customers/update``, and ``customers_email_marketing_consent/update`` /
  ``customers_marketing_consent/update`` (newer API versions carry consent only there, not in
  orders and customers): the customer's marketing consent, as ``consent.granted`` /
  ``consent.revoked``;
- ``customers/redact``: ``customer.erased`` for the customer, the guest records holding their
  email address or phone number, and the customers of the orders it lists; ``shop/redact``:
  ``customer.erased`` for every customer that came from the shop; ``customers/data_request``:
  no event, the stored request is listed for the operator (``ingest.shopify.privacy``).

Order and customer ids are Shopify's numeric ids in decimal, so ``nps-dispatch customer export
7700`` finds customer 7700. A customer a webhook names without an id (a guest checkout) gets a
stable ``shopify-guest:`` id derived from their email address or phone number.

Event ids are derived from Shopify's resource ids (``shopify:order:<id>:purchase``,
``shopify:fulfillment:<id>:delivered``, ``shopify:refund:<id>``), not from the delivery: Shopify
may deliver one change more than once under new webhook ids, and ``orders/create`` and
``orders/paid`` describe one purchase. The same event again is then a duplicate. Consent events
are keyed by the channel, its state and the time of that state, so the same consent seen in an
order and in a ``customers/update`` is recorded once. Privacy requests are keyed by the
delivery: each request is its own event.

Marketing consent (``email_marketing_consent`` / ``sms_marketing_consent``): a state listed in
``[shopify] consent_states`` (``subscribed`` by default) is a grant, any other a revocation, with
its ``opt_in_level`` and ``consent_updated_at`` as evidence. A state that does not count and was
never set (no ``consent_updated_at``: the customer was never asked) records nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from config import OperatorConfig, ShopifyConfig
from ingest.contacts import normalise_email, normalise_phone
from ingest.platforms import (
    Body,
    Delivery,
    Mapped,
    Redaction,
    Unmappable,
    as_object,
    given,
    guest_by_email,
    guest_by_phone,
    keyed,
    line_items,
    numeric_id,
    text,
    timestamp,
    total,
    webhook_body,
)

__all__ = ["PLATFORM", "PURCHASE_TOPICS", "TOPICS", "handles", "map_webhook", "subject_of"]

PLATFORM: Final = "shopify"
PURCHASE_TOPICS: Final = frozenset({"orders/paid", "orders/create"})
TOPICS: Final = frozenset(
    {
        *PURCHASE_TOPICS,
        "orders/cancelled",
        "fulfillments/create",
        "fulfillments/update",
        "refunds/create",
        "customers/update",
        "customers_email_marketing_consent/update",
        "customers_marketing_consent/update",
        "customers/redact",
        "customers/data_request",
        "shop/redact",
    }
)
_FAILED_FULFILMENT: Final = frozenset({"cancelled", "error", "failure"})
# The ``financial_status`` an ``orders/create`` must show to record a purchase (``orders/paid``
# is sent only once an order is paid, so it is taken as it comes). An order is created before
# its payment settles:
# - ``paid`` counts, and ``partially_paid`` (a deposit, or one of split payments: the customer
#   has paid and the order stands);
# - ``authorized`` counts: with manual capture the payment is authorised at checkout and
#   captured only at fulfilment, so the customer has bought; an authorisation that is voided
#   instead comes with ``orders/cancelled``, which withdraws the survey;
# - ``pending`` (a manual or deferred payment not received yet), ``voided``, ``expired``,
#   ``refunded``, ``partially_refunded`` or no status: not a purchase. The delivery is recorded
#   as ``ignored: payment <status>``; a pending order that is paid later is recorded by
#   ``orders/paid`` (same event id, so the two topics never count one order twice).
_PURCHASE_ON_CREATE: Final = frozenset({"paid", "partially_paid", "authorized"})
_CONSENT_FIELDS: Final = (("email", "email_marketing_consent"), ("sms", "sms_marketing_consent"))


def handles(topic: str, options: ShopifyConfig) -> bool:
    """Whether a topic is taken (an order topic only when it is a configured purchase topic)."""
    if topic in PURCHASE_TOPICS:
        return topic in options.purchase_topics
    return topic in TOPICS


GUEST_PREFIX: Final = "shopify-guest:"


def _guest_id(body: Body, customer: Body) -> str | None:
    email = text(customer.get("email"), 320) or text(body.get("email"), 320)
    phone = text(customer.get("phone"), 40) or text(body.get("phone"), 40)
    if email:
        return guest_by_email(GUEST_PREFIX, email)
    if phone:
        return guest_by_phone(GUEST_PREFIX, phone)
    return None


def _customer_id(body: Body, customer: Body) -> str | None:
    raw = customer.get("id")
    if raw is not None:
        return numeric_id(raw, "customer.id")
    return _guest_id(body, customer)


def subject_of(delivery: Delivery) -> str | None:
    """The customer a delivery is about, for the raw row's subject key; never raises."""
    body = as_object(delivery.body)
    try:
        if delivery.topic in PURCHASE_TOPICS:
            return _customer_id(body, as_object(body.get("customer")))
        if delivery.topic in ("customers/update", "customers_marketing_consent/update"):
            return numeric_id(body.get("id"), "id")
        if delivery.topic == "customers_email_marketing_consent/update":
            return numeric_id(body.get("customer_id"), "customer_id")
        if delivery.topic == "customers/data_request":
            return numeric_id(as_object(body.get("customer")).get("id"), "customer.id")
        # customers/redact is keyed to no one: an erasure of the customer must not empty the
        # request while it waits to be applied (it names guest records and orders to erase
        # too); applied, it keeps no payload.
    except Unmappable:
        return None
    return None


def map_webhook(delivery: Delivery, config: OperatorConfig) -> Mapped:
    """The events of one delivery; raises :class:`Unmappable` with the reason."""
    body = webhook_body(delivery, _TOPIC_MAPPERS)
    return _TOPIC_MAPPERS[delivery.topic](delivery, body, config.shopify)


# --------------------------------------------------------------------------------------------
# Orders
# --------------------------------------------------------------------------------------------


def _country(body: Body) -> str | None:
    for key in ("shipping_address", "billing_address"):
        code = text(as_object(body.get(key)).get("country_code"), 2)
        if code:
            return code
    return None


def _previous_orders(customer: Body) -> int | None:
    """``orders_count`` counts this order too; an order seen before its count was updated must
    not make it negative."""
    count = customer.get("orders_count")
    if isinstance(count, str) and count.strip().isdigit():
        count = int(count)
    if isinstance(count, int) and not isinstance(count, bool):
        return max(count - 1, 0)
    return None


def _purchase(delivery: Delivery, body: Body, options: ShopifyConfig) -> Mapped:
    order_id = numeric_id(body.get("id"), "id")
    if delivery.topic == "orders/create":
        status = body.get("financial_status")
        if status not in _PURCHASE_ON_CREATE:
            said = status if isinstance(status, str) and status else "status missing"
            return Mapped(result=f"ignored: payment {said}"[:40])
    customer = as_object(body.get("customer"))
    customer_id = _customer_id(body, customer)
    if customer_id is None:
        raise Unmappable("the order names no customer, email address or phone number")
    bought = timestamp(body.get("processed_at") or body.get("created_at"), "created_at")
    person = {
        "id": customer_id,
        "email": text(customer.get("email"), 320) or text(body.get("email"), 320),
        "phone": text(customer.get("phone"), 40) or text(body.get("phone"), 40),
        "first_name": text(customer.get("first_name"), 120),
        "locale": text(body.get("customer_locale"), 35),
        "country": _country(body),
        "previous_orders": _previous_orders(customer),
    }
    purchase = {
        "type": "purchase.completed",
        "event_id": f"shopify:order:{order_id}:purchase",
        "occurred_at": bought,
        "order_id": order_id,
        "customer": given(person),
        "total": total(body, "total_price"),
        "items": line_items(body, options.category),
        "sales_channel": text(body.get("source_name"), 32),
        "test": body.get("test") is True,
    }
    consent = _consent_events(customer_id, customer, options, fallback=bought)
    # Consent first: the purchase is planned against the consent it was made with.
    return Mapped(events=(*consent, purchase))


def _cancelled(delivery: Delivery, body: Body, options: ShopifyConfig) -> Mapped:
    order_id = numeric_id(body.get("id"), "id")
    at = timestamp(body.get("cancelled_at") or body.get("updated_at"), "cancelled_at")
    event = {
        "type": "order.cancelled",
        "event_id": f"shopify:order:{order_id}:cancelled",
        "occurred_at": at,
        "order_id": order_id,
    }
    return Mapped(events=(event,))


def _refund(delivery: Delivery, body: Body, options: ShopifyConfig) -> Mapped:
    refund_id = numeric_id(body.get("id"), "id")
    event = {
        "type": "order.refunded",
        "event_id": f"shopify:refund:{refund_id}",
        "occurred_at": timestamp(body.get("processed_at") or body.get("created_at"), "created_at"),
        "order_id": numeric_id(body.get("order_id"), "order_id"),
    }
    return Mapped(events=(event,))


def _fulfilment(delivery: Delivery, body: Body, options: ShopifyConfig) -> Mapped:
    """Both fulfilment topics: an update may be the first news of a fulfilment, and repeats the
    fulfilled event under the same id (a duplicate when the create came first)."""
    fulfilment_id = numeric_id(body.get("id"), "id")
    order_id = numeric_id(body.get("order_id"), "order_id")
    status = body.get("status")
    if status in _FAILED_FULFILMENT:
        return Mapped(result=f"ignored: fulfillment {status}")
    events = [
        {
            "type": "order.fulfilled",
            "event_id": f"shopify:fulfillment:{fulfilment_id}:fulfilled",
            "occurred_at": timestamp(body.get("created_at"), "created_at"),
            "order_id": order_id,
        }
    ]
    if body.get("shipment_status") == "delivered":
        events.append(
            {
                "type": "order.delivered",
                "event_id": f"shopify:fulfillment:{fulfilment_id}:delivered",
                "occurred_at": timestamp(
                    body.get("updated_at") or body.get("created_at"), "updated_at"
                ),
                "order_id": order_id,
            }
        )
    return Mapped(events=tuple(events))


# --------------------------------------------------------------------------------------------
# Customers and privacy
# --------------------------------------------------------------------------------------------


def _consent_events(
    customer_id: str, customer: Body, options: ShopifyConfig, *, fallback: str
) -> list[dict[str, Any]]:
    events = []
    for channel, key in _CONSENT_FIELDS:
        consent = customer.get(key)
        if not isinstance(consent, Mapping):
            continue
        state = consent.get("state")
        if not isinstance(state, str) or not state:
            continue
        counts = state in options.consent_states
        updated = text(consent.get("consent_updated_at"), 64)
        if updated is None and not counts:
            continue  # never asked: no decision to record
        at = updated or fallback
        level = text(consent.get("opt_in_level"), 40) or "unknown"
        events.append(
            {
                "type": "consent.granted" if counts else "consent.revoked",
                "event_id": f"shopify:consent:{channel}:{keyed(customer_id, channel, state, at)}",
                "occurred_at": at,
                # Only the id: contacts come with purchases, and a consent event with the same
                # id must read the same from an order and from a customers/update.
                "customer": {"id": customer_id},
                "consent": {
                    channel: counts,
                    "source": f"shopify {key}: {state}, {level}",
                    "captured_at": at,
                },
            }
        )
    # Grants first: a revocation in the same webhook can then move an unsent survey to the
    # channel granted with it, rather than stop it.
    return sorted(events, key=lambda event: event["type"] != "consent.granted")


def _customer_update(delivery: Delivery, body: Body, options: ShopifyConfig) -> Mapped:
    customer_id = numeric_id(body.get("id"), "id")
    fallback = timestamp(body.get("updated_at") or body.get("created_at"), "updated_at")
    events = _consent_events(customer_id, body, options, fallback=fallback)
    return Mapped(events=tuple(events), result="no consent to record")


def _consent_update(delivery: Delivery, body: Body, options: ShopifyConfig) -> Mapped:
    """The consent topics: one channel's consent, under ``customer_id`` (email) or ``id``
    (SMS), with no time of their own beyond the consent's."""
    key = "customer_id" if "email_marketing_consent" in body else "id"
    customer_id = numeric_id(body.get(key), key)
    fallback = delivery.received_at.isoformat()
    events = _consent_events(customer_id, body, options, fallback=fallback)
    return Mapped(events=tuple(events), result="no consent to record")


def _redact(delivery: Delivery, body: Body, options: ShopifyConfig) -> Mapped:
    """Everything held about the person: the customer of the id, the guest records derived
    from the request's email address and phone number (both, as a guest checkout with no
    address is keyed by its number), and, looked up when applied (:class:`Redaction`), any
    other guest record holding that address or number and the customers of the orders in
    ``orders_to_redact``. Each is erased by its own ``customer.erased``."""
    customer = as_object(body.get("customer"))
    registered = None
    if customer.get("id") is not None:
        registered = numeric_id(customer.get("id"), "customer.id")
    email = text(customer.get("email"), 320)
    phone = text(customer.get("phone"), 40)
    guests = [guest_by_email(GUEST_PREFIX, email)] if email else []
    guests += [guest_by_phone(GUEST_PREFIX, phone)] if phone else []
    orders, unreadable = [], 0
    for order in body.get("orders_to_redact") or ():
        try:
            orders.append(numeric_id(order, "orders_to_redact"))
        except Unmappable:
            unreadable += 1  # the others are still erased
    if registered is None and not guests and not orders:
        raise Unmappable("the request names no customer id, email address, phone number or order")
    prefix = f"shopify:{delivery.delivery_id[:99]}:redact"
    at = delivery.received_at.isoformat()
    # The customer's id keeps the event id it always had; the guest records are told apart by
    # a keyed digest, never by their id.
    ids = [(prefix, registered)] if registered else []
    ids += [(f"{prefix}:{keyed(guest)}", guest) for guest in dict.fromkeys(guests)]
    events = [
        {"type": "customer.erased", "event_id": event, "occurred_at": at, "customer": {"id": who}}
        for event, who in ids
    ]
    emails = [normalise_email(email).value] if email else []
    phones = [normalise_phone(phone, None).value] if phone else []
    also = Redaction(
        orders=tuple(dict.fromkeys(orders)),
        guest_prefix=GUEST_PREFIX,
        emails=tuple(e for e in emails if e),
        phones=tuple(p for p in phones if p),
    )
    notice = None
    if unreadable:
        notice = f"shopify customers/redact: {unreadable} entries of orders_to_redact unreadable"
    return Mapped(events=tuple(events), redaction=also, notice=notice)


def _data_request(delivery: Delivery, body: Body, options: ShopifyConfig) -> Mapped:
    numeric_id(as_object(body.get("customer")).get("id"), "customer.id")
    request = as_object(body.get("data_request")).get("id")
    request_id = str(request) if isinstance(request, int | str) else "(no id)"
    notice = (
        f"ACTION shopify customers/data_request {request_id[:40]} from {delivery.shop} stored: "
        "send the shop the data of the customer it names (`nps-dispatch customer export ID`; "
        "the stored requests are listed by ingest.shopify.privacy.data_requests)"
    )
    return Mapped(result="data request recorded", notice=notice)


def _shop_redact(delivery: Delivery, body: Body, options: ShopifyConfig) -> Mapped:
    if not delivery.shop:
        raise Unmappable("X-Shopify-Shop-Domain: missing, so the shop to erase is unknown")
    return Mapped(erase_shop=True, result="shop erased")


_TOPIC_MAPPERS: Final[Mapping[str, Callable[[Delivery, Body, ShopifyConfig], Mapped]]] = {
    "orders/paid": _purchase,
    "orders/create": _purchase,
    "orders/cancelled": _cancelled,
    "fulfillments/create": _fulfilment,
    "fulfillments/update": _fulfilment,
    "refunds/create": _refund,
    "customers/update": _customer_update,
    "customers_email_marketing_consent/update": _consent_update,
    "customers_marketing_consent/update": _consent_update,
    "customers/redact": _redact,
    "customers/data_request": _data_request,
    "shop/redact": _shop_redact,
}
