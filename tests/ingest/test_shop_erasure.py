"""Erasure and the shop platforms' webhooks, on SQLite and PostgreSQL: what a Shopify or
WooCommerce delivery stored about a person is gone after their erasure, including deliveries
not applied yet, and none of them brings the person back when it is replayed or redelivered."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from config import OperatorConfig
from ingest import platforms, shopify, woocommerce
from ingest.service import ingest_event
from models import Base, Customer, DeadLetter, InboundEvent
from tests.conftest import NOW, Database
from tests.factories import erased
from tests.faults import refused
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


# -- customers/redact ---------------------------------------------------------------------------

PERSON = ("john@example.com", "old.address@example.org", "6135550123", "(613) 555-0123")


def mentioned_anywhere(db: Database, *needles: str) -> list[str]:
    """Every table where some row's text holds one of ``needles`` (read without the code under
    test)."""
    found = []
    with db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(select(table)).mappings():
                if mentions(dict(row), *needles):
                    found.append(table.name)
    return sorted(set(found))


def as_guest(order_id: int, *, email: str | None, phone: str | None) -> dict[str, Any]:
    body = guest_order(order_id, email=email, phone=phone)
    return body | {"email": email, "contact_email": email, "phone": phone}


def test_customers_redact_erases_the_guest_records_and_the_customers_of_its_orders(
    db: Database, config: OperatorConfig
):
    deliver(db, config, "orders/paid", fixture("orders_paid") | {"id": 1001})
    by_email = as_guest(2001, email="john@example.com", phone=None)
    by_phone = as_guest(2002, email=None, phone="+16135550123")
    by_national_phone = as_guest(2003, email=None, phone="(613) 555-0123")
    listed_order = as_guest(int(ORDER), email="old.address@example.org", phone=None)
    for body in (by_email, by_phone, by_national_phone, listed_order):
        assert deliver(db, config, "orders/paid", body).status == "applied"
    someone_else = fixture("orders_paid") | {"id": 3001, "email": "other@example.org"}
    someone_else["customer"] |= {"id": 7701, "email": "other@example.org", "phone": None}
    deliver(db, config, "orders/paid", someone_else)
    assert len(customers(db)) == 6 and mentioned_anywhere(db, *PERSON)

    received = deliver(db, config, "customers/redact", fixture("customers_redact"))

    assert received.status == "applied"
    assert [r.status for r in received.events] == ["accepted"] * 5
    kept = [c for c in customers(db) if c.erased_at is None]
    assert [c.external_id for c in kept] == ["7701"]
    erased_rows = [c for c in customers(db) if c.erased_at is not None]
    assert len(erased_rows) == 5
    assert all((c.email, c.phone, c.first_name) == (None, None, None) for c in erased_rows)
    assert mentioned_anywhere(db, *PERSON) == []
    # A late copy of a guest order placed before the request brings no one back.
    late = deliver(db, config, "orders/paid", by_email | {"id": 2009}, now=LATER)
    assert [r.outcome for r in late.events] == ["customer erased"]
    assert len(customers(db)) == 6 and mentioned_anywhere(db, *PERSON) == []


def test_customers_redact_of_a_person_known_only_by_an_order(db: Database, config):
    deliver(
        db, config, "orders/paid", as_guest(int(ORDER), email="old.address@example.org", phone=None)
    )
    request = {"shop_id": 954889, "customer": {}, "orders_to_redact": [int(ORDER), "x"]}

    received = deliver(db, config, "customers/redact", request)

    assert [r.status for r in received.events] == ["accepted"]
    [customer] = customers(db)
    assert customer.erased_at is not None and mentioned_anywhere(db, *PERSON) == []


def test_customers_redact_naming_nothing_is_a_dead_letter(db: Database, config):
    received = deliver(db, config, "customers/redact", {"shop_id": 954889, "customer": {}})

    assert received.status == "dead_letter"
    letter = one(db, DeadLetter)
    assert letter.error.endswith("names no customer id, email address, phone number or order")


def erasures_refused(db: Database) -> AbstractContextManager[None]:
    """A real database error whenever an erasure writes its tombstone (a trigger)."""
    return refused(db, "erased_subjects", "1 = 1", name="test_refuse_erasure")


def test_a_redact_request_waiting_for_its_replay_outlives_an_erasure_of_the_customer(
    db: Database, config: OperatorConfig
):
    deliver(db, config, "orders/paid", fixture("orders_paid") | {"id": 1001})
    deliver(db, config, "orders/paid", as_guest(2001, email="john@example.com", phone=None))
    with erasures_refused(db):
        failed = deliver(db, config, "customers/redact", fixture("customers_redact"))
    assert failed.status == "failed"

    # The shop's own erasure of the customer, through the events API, comes first.
    assert ingest_event(db.factory, erased(CUSTOMER, at=NOW), config, NOW).status == "accepted"

    request = one(db, InboundEvent, InboundEvent.event_type == "customers/redact")
    assert request.handled_at is None and request.payload is not None
    assert platforms.replay_unhandled(db.factory, config, ADAPTERS, now=LATER) == 1
    assert all(c.erased_at is not None for c in customers(db))
    assert mentioned_anywhere(db, *PERSON) == []
