"""Erasure and the shop platforms' webhooks, on SQLite and PostgreSQL: what a Shopify or
WooCommerce delivery stored about a person is gone after their erasure, including deliveries
not applied yet, and none of them brings the person back when it is replayed or redelivered."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from ingest import platforms, shopify, woocommerce
from ingest.service import ingest_event
from models import Customer, InboundEvent
from tests.conftest import NOW, Database
from tests.factories import erased
from tests.ingest.test_shopify import (
    CUSTOMER,
    ORDER,
    deliver,
    fixture,
    one,
    orders_refused,
)
from tests.ingest.test_woocommerce import deliver as woo_deliver
from tests.ingest.test_woocommerce import order as woo_order
from tests.ingest.test_woocommerce import with_consent_keys
from worker.config import OperatorConfig

EMAIL = "john@example.com"  # the Shopify fixtures' customer
PHONE = "+16135550123"
LATER = NOW + timedelta(minutes=5)
ADAPTERS = [shopify.ADAPTER, woocommerce.ADAPTER]


def mentions(value: Any, *needles: str) -> bool:
    text = json.dumps(value, default=str).lower()
    return any(needle.lower() in text for needle in needles)


def guest_order(order_id: int = int(ORDER), **customer: Any) -> dict[str, Any]:
    """The fixture's order placed as a guest: the customer object has no id, and no marketing
    consent (a consent event would be applied before the purchase, on its own)."""
    body = fixture("orders_paid")
    body["id"] = order_id
    for key in ("id", "email_marketing_consent", "sms_marketing_consent"):
        del body["customer"][key]
    body["customer"].update(customer)
    return body


def customers(db: Database) -> list[Customer]:
    with db.session() as s:
        return list(s.scalars(select(Customer).order_by(Customer.id)))


# -- deliveries stored but not applied yet -----------------------------------------------------


def test_an_unapplied_shopify_guest_order_naming_the_address_is_emptied_and_closed(
    db: Database, config: OperatorConfig
):
    other = fixture("orders_paid") | {"id": 1001}
    deliver(db, config, "orders/paid", other, webhook_id="wh-registered")
    with orders_refused(db, ORDER):
        failed = deliver(db, config, "orders/paid", guest_order(), webhook_id="wh-guest")
    assert failed.status == "failed"
    pending = one(db, InboundEvent, InboundEvent.external_id.endswith("/wh-guest"))
    assert pending.handled_at is None and mentions(pending.payload, EMAIL)

    assert ingest_event(db.factory, erased(CUSTOMER, at=NOW), config, NOW).status == "accepted"

    closed = one(db, InboundEvent, InboundEvent.id == pending.id)
    assert (closed.payload, closed.subject_key) == (None, None)
    assert (closed.result, closed.error, closed.retry_at) == ("erased", None, None)
    assert closed.handled_at is not None
    # Neither the replay nor Shopify's redelivery of it brings the guest back.
    assert platforms.replay_unhandled(db.factory, config, ADAPTERS, now=LATER) == 0
    again = deliver(db, config, "orders/paid", guest_order(), webhook_id="wh-guest", now=LATER)
    assert again.status == "duplicate"
    [customer] = customers(db)
    assert customer.erased_at is not None and customer.email is None


def test_an_unapplied_guest_order_found_by_the_phone_number_is_closed_too(
    db: Database, config: OperatorConfig
):
    deliver(db, config, "orders/paid", fixture("orders_paid") | {"id": 1001})
    body = guest_order(email=None) | {"email": None}
    with orders_refused(db, ORDER):
        deliver(db, config, "orders/paid", body, webhook_id="wh-phone")

    ingest_event(db.factory, erased(CUSTOMER, at=NOW), config, NOW)

    closed = one(db, InboundEvent, InboundEvent.external_id.endswith("/wh-phone"))
    assert (closed.payload, closed.result) == (None, "erased")
    platforms.replay_unhandled(db.factory, config, ADAPTERS, now=LATER)
    assert [c.phone for c in customers(db)] == [None]


def test_an_unapplied_woocommerce_order_of_the_customer_is_closed_as_erased(
    db: Database, config: OperatorConfig
):
    config = with_consent_keys(config)
    woo_deliver(db, config, woo_order("order_processing") | {"id": 722})
    with orders_refused(db, "723"):
        failed = woo_deliver(db, config, woo_order("order_processing"), delivery_id="d-723")
    assert failed.status == "failed"

    ingest_event(db.factory, erased("26", at=NOW), config, NOW)

    closed = one(db, InboundEvent, InboundEvent.external_id.endswith("/d-723"))
    assert (closed.payload, closed.subject_key, closed.result) == (None, None, "erased")
    assert closed.handled_at is not None
    assert platforms.replay_unhandled(db.factory, config, ADAPTERS, now=LATER) == 0
    redelivered = woo_deliver(db, config, woo_order("order_processing"), delivery_id="d-723")
    assert redelivered.status == "duplicate"
    [customer] = customers(db)
    assert customer.erased_at is not None and customer.email is None


def test_an_erasure_leaves_other_peoples_unapplied_deliveries_alone(
    db: Database, config: OperatorConfig
):
    deliver(db, config, "orders/paid", fixture("orders_paid") | {"id": 1001})
    stranger = guest_order(email="someone.else@example.org", phone="+16135550999")
    stranger |= {"email": "someone.else@example.org", "phone": "+16135550999"}
    with orders_refused(db, ORDER):
        deliver(db, config, "orders/paid", stranger, webhook_id="wh-stranger")

    ingest_event(db.factory, erased(CUSTOMER, at=NOW), config, NOW)

    kept = one(db, InboundEvent, InboundEvent.external_id.endswith("/wh-stranger"))
    assert kept.handled_at is None and kept.payload is not None
    assert platforms.replay_unhandled(db.factory, config, ADAPTERS, now=LATER) == 1
    assert "someone.else@example.org" in [c.email for c in customers(db)]
