"""What each shop event does to the database. Called inside the event's own transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from config import OperatorConfig
from dispatch import planning, stopping
from ingest.contacts import normalise_email, normalise_phone
from ingest.schema import ConsentEvent, CustomerIn, OrderEvent, PurchaseCompleted
from models import (
    Customer,
    Order,
)
from models.base import insert_ignoring_conflict
from models.customers import ContactStatus, record_consent
from models.erasure import erased_at, forget_subject, subject_key

SHOP_SOURCE: Final = "shop"
"""The inbound ledger's source of the shop's own events."""


@dataclass(frozen=True, slots=True)
class ApplyContext:
    config: OperatorConfig
    now: datetime


def lock_customer(session: Session, external_id: str) -> Customer | None:
    # FOR UPDATE serialises concurrent events about one customer on PostgreSQL (the frequency
    # cap and consent checks read-then-write); SQLite already has a single writer.
    return session.scalar(
        select(Customer).where(Customer.external_id == external_id).with_for_update()
    )


def upsert_customer(session: Session, data: CustomerIn) -> Customer:
    """The customer row, locked, created when missing, with what ``data`` gives. The caller
    holds the subject's lock (:func:`~models.erasure.erased_at` takes it), as every creator of
    a customer row must (:func:`~models.erasure.lock_subject`)."""
    customer = lock_customer(session, data.id)
    if customer is None:
        session.execute(
            insert_ignoring_conflict(
                session,
                Customer,
                ["external_id"],
                {"external_id": data.id},
            )
        )
        customer = lock_customer(session, data.id)
        if customer is None:  # pragma: no cover - the row was just inserted or committed
            raise RuntimeError("customer row missing after insert")
    update_customer(customer, data)
    session.flush()
    return customer


def update_customer(customer: Customer, data: CustomerIn) -> None:
    """Take the contacts and details an event gives (normalised); a field it leaves out keeps
    its stored value. Shared by the per-event and the set-based paths."""
    country = data.country or customer.country
    if data.email is not None:
        email = normalise_email(data.email)
        customer.email, customer.email_status = email.value, email.status
    if data.phone is not None:
        phone = normalise_phone(data.phone, country)
        customer.phone, customer.phone_status = phone.value, phone.status
        customer.phone_timezone = phone.zone
    for field in ("first_name", "locale", "timezone", "country", "previous_orders"):
        value = getattr(data, field)
        if value is not None:
            setattr(customer, field, value)
    customer.email_status = customer.email_status or ContactStatus.missing
    customer.phone_status = customer.phone_status or ContactStatus.missing


def _lock_order(session: Session, external_id: str) -> Order | None:
    return session.scalar(select(Order).where(Order.external_id == external_id).with_for_update())


def _order(session: Session, external_id: str) -> Order:
    """The order row, locked; created first when this is the first event about the order
    (race-free against a concurrent first event, see :func:`insert_ignoring_conflict`)."""
    order = _lock_order(session, external_id)
    if order is None:
        session.execute(
            insert_ignoring_conflict(session, Order, ["external_id"], {"external_id": external_id})
        )
        order = _lock_order(session, external_id)
        if order is None:  # pragma: no cover - the row was just inserted or committed
            raise RuntimeError("order row missing after insert")
    return order


def apply_purchase(session: Session, event: PurchaseCompleted, ctx: ApplyContext) -> str:
    order = _order(session, event.order_id)
    tombstone = erased_at(session, event.customer.id)
    erased_before = tombstone is not None and event.occurred_at <= tombstone
    if order.purchased_at is not None:
        # A second purchase event for one order plans nothing; one about an erased customer
        # keeps nothing tied to them (its own ledger row included) either.
        if erased_before:
            forget_subject(session, subject_key(event.customer.id))
        return "order already recorded"
    if erased_before:
        # A late event about an erased customer: count the purchase, keep no personal data
        # (nor a ledger row tied to them).
        fill_order(order, event, customer_id=None)
        planning.skip_erased(session, order)
        forget_subject(session, subject_key(event.customer.id))
        return "customer erased"
    customer = upsert_customer(session, event.customer)
    if event.consent is not None and event.consent.channels():
        record_consent(
            session,
            customer,
            event.consent.channels(),
            source=event.consent.source,
            text_version=event.consent.text_version,
            captured_at=event.consent.captured_at or event.occurred_at,
            evidence_kind="event",
            evidence_ref=event.event_id,
            recorded_at=ctx.now,
        )
    fill_order(order, event, customer_id=customer.id)
    session.flush()
    return planning.plan_purchase(session, order, customer, ctx.config, ctx.now)


def fill_order(order: Order, event: PurchaseCompleted, customer_id: int | None) -> None:
    categories = [i.category for i in event.items if i.category]
    order.customer_id = customer_id
    order.purchased_at = event.occurred_at
    order.total_amount = event.total.amount
    order.currency = event.total.currency
    order.categories = categories
    order.category = categories[0] if categories else None
    order.sales_channel = event.sales_channel
    order.country = event.customer.country
    order.previous_orders = event.customer.previous_orders
    order.is_test = event.test


ANCHOR_EVENTS: Final = ("order.fulfilled", "order.delivered")


def record_anchor(order: Order, event: OrderEvent) -> None:
    """An anchor event's time on its order; the first one of each kind stands."""
    if event.type == "order.fulfilled":
        if order.fulfilled_at is None:
            order.fulfilled_at = event.occurred_at
    elif order.delivered_at is None:
        order.delivered_at = event.occurred_at


def apply_order_event(session: Session, event: OrderEvent, ctx: ApplyContext) -> str:
    order = _order(session, event.order_id)
    if event.type in ANCHOR_EVENTS:
        record_anchor(order, event)
    else:
        if order.cancelled_at is None:
            order.cancelled_at = event.occurred_at
            order.cancel_kind = event.type.removeprefix("order.")
        session.flush()
        return stopping.withdraw_order(session, order, reason=event.type, now=ctx.now)
    session.flush()
    if order.purchased_at is None:
        return "kept until the purchase arrives"
    return planning.on_anchor_event(session, order, ctx.config, ctx.now)


def apply_consent_event(session: Session, event: ConsentEvent, ctx: ApplyContext) -> str:
    tombstone = erased_at(session, event.customer.id)
    if tombstone is not None and event.occurred_at <= tombstone:
        # A late event about an erased customer: its own ledger row keeps no link to them.
        forget_subject(session, subject_key(event.customer.id))
        return "customer erased"
    customer = upsert_customer(session, event.customer)
    # Each value given is the channel's consent after the event; the schema has refused any
    # value that contradicts the event type, so the two always agree here.
    channels = event.consent.channels()
    record_consent(
        session,
        customer,
        channels,
        source=event.consent.source,
        text_version=event.consent.text_version,
        captured_at=event.consent.captured_at or event.occurred_at,
        evidence_kind="event",
        evidence_ref=event.event_id,
    )
    revoked = [ch for ch, value in channels.items() if not value]
    outcomes = [
        stopping.on_consent_revoked(session, customer, ch, ctx.config, ctx.now) for ch in revoked
    ]
    return "; ".join(o for o in outcomes if o) or event.type.removeprefix("consent.")


PLATFORM_SOURCES: Final = ("shopify", "woocommerce")
"""The ledger sources of the shop platforms' webhooks (``ingest/shopify``,
``ingest/woocommerce``; ``ingest.platforms.Adapter`` takes no other)."""
# A privacy request stored but not applied yet is not closed by an erasure: it is itself an
# order to erase (a customers/redact also names guest records and orders), and it empties its
# own payload once applied.
