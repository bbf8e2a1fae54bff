"""`nps-dispatch demo --shop shopify`: the simulated shop as a Shopify store.

The simulation's events (``demo.simulation``) become the webhooks Shopify would send for them,
signed with the demo's webhook secret and posted to ``POST /webhooks/shopify`` of the real app,
so the demo drives the Shopify adapter end to end: signature, raw storage, mapping, the one
ingest path.

- ``purchase.completed``: ``orders/paid``, the order and its customer with ``orders_count`` and
  marketing consent;
- ``order.delivered``: ``fulfillments/update`` with ``shipment_status`` ``delivered``;
- ``order.cancelled``: ``orders/cancelled``; ``order.refunded``: ``refunds/create``.

Shopify's ids are numbers, so simulated customer ``sim-c-12`` is Shopify customer ``7000012``
and order ``sim-o-7-40`` is order ``800000040``. An event the simulation sends twice is delivered
twice under two webhook ids, as Shopify may: the second is a duplicate event. One order without
an id shows the dead-letter store.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Final

from fastapi import FastAPI
from fastapi.testclient import TestClient

from demo.simulation import SimulatedCustomer
from ingest.shopify import sign
from wiring.runtime import Runtime

__all__ = [
    "DEMO_SHOP",
    "DEMO_SHOPIFY_SECRET",
    "customer_number",
    "order_number",
    "post_to_shopify_route",
    "shopify_app",
    "shopify_customers",
    "shopify_webhooks",
]

# Signs the demo's own simulated webhooks only; `demo` runs with no account anywhere.
DEMO_SHOPIFY_SECRET: Final = "demo-shopify-webhook-secret"  # noqa: S105
DEMO_SHOP: Final = "nps-demo.myshopify.com"
_IDS: Final = uuid.UUID("6f1d2c3e-51a8-4c3b-9f1e-5d0c2b7a8e41")  # namespace of the demo's ids

Webhook = tuple[str, str, dict[str, Any]]  # topic, webhook id, body


def customer_number(simulated_id: str) -> str:
    """``sim-c-12`` -> ``7000012``: a Shopify customer id."""
    return str(7_000_000 + int(simulated_id.rsplit("-", 1)[1]))


def order_number(simulated_id: str) -> str:
    """``sim-o-7-40`` -> ``800000040``: a Shopify order id."""
    return str(800_000_000 + int(simulated_id.rsplit("-", 1)[1]))


def _consent(granted: bool, at: str) -> dict[str, Any]:
    return {
        "state": "subscribed" if granted else "not_subscribed",
        "opt_in_level": "single_opt_in",
        "consent_updated_at": at if granted else None,
    }


def _order(event: dict[str, Any]) -> dict[str, Any]:
    person = event["customer"]
    consent = event.get("consent") or {}
    at = event["occurred_at"]
    number = int(order_number(event["order_id"]))
    return {
        "id": number,
        "admin_graphql_api_id": f"gid://shopify/Order/{number}",
        "name": f"#{number}",
        "created_at": at,
        "processed_at": at,
        "updated_at": at,
        "currency": event["total"]["currency"],
        "total_price": event["total"]["amount"],
        "financial_status": "paid",
        "customer_locale": person.get("locale"),
        "source_name": event.get("sales_channel") or "web",
        "test": bool(event.get("test")),
        "email": person.get("email"),
        "phone": person.get("phone"),
        "shipping_address": {"country_code": person.get("country")},
        "customer": {
            "id": int(customer_number(person["id"])),
            "email": person.get("email"),
            "phone": person.get("phone"),
            "first_name": person.get("first_name"),
            "orders_count": (person.get("previous_orders") or 0) + 1,
            "email_marketing_consent": _consent(bool(consent.get("email")), at),
            "sms_marketing_consent": _consent(bool(consent.get("sms")), at),
        },
        "line_items": [
            {
                "id": number * 10 + n,
                "sku": item.get("sku"),
                "quantity": item.get("quantity", 1),
                "vendor": item.get("category"),  # [shopify] category = "vendor" reads it
            }
            for n, item in enumerate(event.get("items") or ())
        ],
    }


def _webhook(event: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    kind, at = event.get("type"), event.get("occurred_at")
    if kind == "purchase.completed":
        return "orders/paid", _order(event)
    order = int(order_number(event["order_id"]))
    if kind == "order.delivered":
        return "fulfillments/update", {
            "id": order + 1_000_000_000,
            "order_id": order,
            "status": "success",
            "shipment_status": "delivered",
            "created_at": at,
            "updated_at": at,
        }
    if kind == "order.cancelled":
        return "orders/cancelled", {"id": order, "cancelled_at": at, "updated_at": at}
    if kind == "order.refunded":
        return "refunds/create", {
            "id": order + 2_000_000_000,
            "order_id": order,
            "created_at": at,
            "processed_at": at,
        }
    return None


def shopify_webhooks(events: Iterable[dict[str, Any]]) -> list[Webhook]:
    """The webhooks Shopify would send for the simulated events, in their order."""
    seen: Counter[str] = Counter()
    webhooks: list[Webhook] = []
    for event in events:
        converted = _webhook(event)
        if converted is None:
            continue
        topic, body = converted
        key = str(event["event_id"])
        seen[key] += 1
        webhook_id = str(uuid.uuid5(_IDS, f"{key}#{seen[key]}"))
        webhooks.append((topic, webhook_id, body))
    first = next((body for topic, _, body in webhooks if topic == "orders/paid"), None)
    if first is not None:  # an order Shopify would never send: it shows the dead-letter store
        broken = {key: value for key, value in first.items() if key != "id"}
        webhooks.append(("orders/paid", str(uuid.uuid5(_IDS, "broken")), broken))
    return webhooks


def shopify_app(runtime: Runtime) -> FastAPI:
    """The web app, as `nps-dispatch web` serves it (the Shopify route included)."""
    from web.app import create_app

    return create_app(runtime)


def post_to_shopify_route(
    client: TestClient,
    webhooks: Iterable[Webhook],
    *,
    secret: str = DEMO_SHOPIFY_SECRET,
    on_answer: Callable[[int], None] | None = None,
) -> Counter[str]:
    """Post each webhook as Shopify does (signed raw body, its headers). Counts the answers by
    status (``applied``, ``duplicate``, ``dead_letter``, or ``HTTP <code>`` when not 200) and
    the events they carried by status (``event accepted``, ``event duplicate``...)."""
    answers: Counter[str] = Counter()
    for topic, webhook_id, body in webhooks:
        content = json.dumps(body).encode()
        response = client.post(
            "/webhooks/shopify",
            content=content,
            headers={
                "Content-Type": "application/json",
                "X-Shopify-Topic": topic,
                "X-Shopify-Hmac-Sha256": sign(secret, content),
                "X-Shopify-Shop-Domain": DEMO_SHOP,
                "X-Shopify-API-Version": "2024-10",
                "X-Shopify-Webhook-Id": webhook_id,
            },
        )
        if response.status_code == 200:
            answer = response.json()
            answers[str(answer["status"])] += 1
            for event in answer.get("events", ()):
                answers[f"event {event['status']}"] += 1
        else:
            answers[f"HTTP {response.status_code}"] += 1
        if on_answer is not None:
            on_answer(response.status_code)
    return answers


def shopify_customers(customers: Iterable[SimulatedCustomer]) -> dict[str, SimulatedCustomer]:
    """The simulated customers under their Shopify ids (what the database holds)."""
    return {customer_number(c.id): c for c in customers}
