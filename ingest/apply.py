"""What each shop event does to the database. Called inside the event's own transaction."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ingest.contacts import normalise_email, normalise_phone
from ingest.schema import ConsentEvent, CustomerErased, CustomerIn, OrderEvent, PurchaseCompleted
from models import (
    Answer,
    ConsentRecord,
    Customer,
    DeadLetter,
    ErasedSubject,
    InboundEvent,
    MessageRecord,
    Order,
    Survey,
    SurveyState,
    move,
)
from models.customers import ContactStatus
from models.lifecycle import UNSENT_STATES
from worker import planning
from worker.config import OperatorConfig


@dataclass(frozen=True, slots=True)
class ApplyContext:
    config: OperatorConfig
    now: datetime


def subject_hash(customer_external_id: str) -> str:
    return hashlib.sha256(customer_external_id.encode()).hexdigest()


def erased_at(session: Session, customer_external_id: str) -> datetime | None:
    return session.scalar(
        select(ErasedSubject.erased_at).where(
            ErasedSubject.subject_hash == subject_hash(customer_external_id)
        )
    )


def _lock_customer(session: Session, external_id: str) -> Customer | None:
    # FOR UPDATE serialises concurrent events about one customer on PostgreSQL (the frequency
    # cap and consent checks read-then-write); SQLite already has a single writer.
    return session.scalar(
        select(Customer).where(Customer.external_id == external_id).with_for_update()
    )


def upsert_customer(session: Session, data: CustomerIn) -> Customer:
    customer = _lock_customer(session, data.id)
    if customer is None:
        customer = Customer(external_id=data.id)
        session.add(customer)
    country = data.country or customer.country
    if data.email is not None:
        email = normalise_email(data.email)
        customer.email, customer.email_status = email.value, email.status
    if data.phone is not None:
        phone = normalise_phone(data.phone, country)
        customer.phone, customer.phone_status = phone.value, phone.status
    for field in ("first_name", "locale", "timezone", "country", "previous_orders"):
        value = getattr(data, field)
        if value is not None:
            setattr(customer, field, value)
    customer.email_status = customer.email_status or ContactStatus.missing
    customer.phone_status = customer.phone_status or ContactStatus.missing
    session.flush()
    return customer


def _order(session: Session, external_id: str) -> Order:
    order = session.scalar(select(Order).where(Order.external_id == external_id).with_for_update())
    if order is None:
        order = Order(external_id=external_id)
        session.add(order)
        session.flush()
    return order


def record_consent(
    session: Session,
    customer: Customer,
    channels: dict[str, bool],
    *,
    source: str | None,
    text_version: str | None,
    captured_at: datetime,
    evidence_kind: str,
    evidence_ref: str | None,
) -> None:
    for channel, granted in channels.items():
        session.add(
            ConsentRecord(
                customer_id=customer.id,
                channel=channel,
                granted=granted,
                source=source,
                text_version=text_version,
                captured_at=captured_at,
                evidence_kind=evidence_kind,
                evidence_ref=evidence_ref,
            )
        )
    session.flush()


def apply_purchase(session: Session, event: PurchaseCompleted, ctx: ApplyContext) -> str:
    order = _order(session, event.order_id)
    if order.purchased_at is not None:
        return "order already recorded"  # a second purchase event for one order plans nothing
    tombstone = erased_at(session, event.customer.id)
    if tombstone is not None and event.occurred_at <= tombstone:
        # A late event about an erased customer: count the purchase, keep no personal data.
        _fill_order(order, event, customer_id=None)
        planning.skip_erased(session, order)
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
        )
    _fill_order(order, event, customer_id=customer.id)
    session.flush()
    return planning.plan_purchase(session, order, customer, ctx.config, ctx.now)


def _fill_order(order: Order, event: PurchaseCompleted, customer_id: int | None) -> None:
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


def apply_order_event(session: Session, event: OrderEvent, ctx: ApplyContext) -> str:
    order = _order(session, event.order_id)
    if event.type == "order.fulfilled":
        if order.fulfilled_at is None:
            order.fulfilled_at = event.occurred_at
    elif event.type == "order.delivered":
        if order.delivered_at is None:
            order.delivered_at = event.occurred_at
    else:
        if order.cancelled_at is None:
            order.cancelled_at = event.occurred_at
            order.cancel_kind = event.type.removeprefix("order.")
        session.flush()
        return planning.withdraw_order(session, order, reason=event.type, now=ctx.now)
    session.flush()
    if order.purchased_at is None:
        return "kept until the purchase arrives"
    return planning.on_anchor_event(session, order, ctx.config, ctx.now)


def apply_consent_event(session: Session, event: ConsentEvent, ctx: ApplyContext) -> str:
    tombstone = erased_at(session, event.customer.id)
    if tombstone is not None and event.occurred_at <= tombstone:
        return "customer erased"
    customer = upsert_customer(session, event.customer)
    granted = event.type == "consent.granted"
    # The event type says what happens; the channels flagged true say to which channels.
    channels = {ch: granted for ch in event.consent.flagged()}
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
        planning.on_consent_revoked(session, customer, ch, ctx.config, ctx.now) for ch in revoked
    ]
    return "; ".join(o for o in outcomes if o) or ("granted" if granted else "revoked")


def apply_erasure(session: Session, event: CustomerErased, ctx: ApplyContext) -> str:
    """GDPR art. 17: remove personal data; keep anonymised counts (orders, scores, outcomes).

    Unsent surveys end ``withdrawn``. A survey in ``sending`` is left to its sender, which
    re-checks after its rate limit wait (still unsent: ``withdrawn``) and, when the provider took
    the message meanwhile, records ``sent`` without the provider's message id or the body: the
    invitation went out and is counted, nothing personal is kept. The sender reads the customer
    row under a share lock, and this erasure holds it ``FOR UPDATE``, so the sender either sees
    the erasure or commits first and has its personal columns emptied below. No reminder goes to
    an erased customer."""
    key = event.customer.id
    session.merge(ErasedSubject(subject_hash=subject_hash(key), erased_at=event.occurred_at))
    customer = _lock_customer(session, key)
    # Raw payloads and dead letters about them can hold contacts: drop them.
    session.execute(
        update(InboundEvent).where(InboundEvent.subject_key == key).values(payload=None)
    )
    session.execute(delete(DeadLetter).where(DeadLetter.subject_key == key))
    if customer is None:
        return "nothing stored"
    survey_ids = list(session.scalars(select(Survey.id).where(Survey.customer_id == customer.id)))
    move(
        session,
        survey_ids,
        SurveyState.withdrawn,
        reason="customer erased",
        only_from=UNSENT_STATES,
        now=ctx.now,
        final_reason="customer erased",
    )
    if survey_ids:
        # Free text may name them; provider message ids point at records holding their contacts.
        session.execute(
            update(Survey)
            .where(Survey.id.in_(survey_ids))
            .values(comment=None, provider_message_id=None, next_reminder_at=None)
        )
        session.execute(update(Answer).where(Answer.survey_id.in_(survey_ids)).values(comment=None))
        session.execute(
            update(MessageRecord)
            .where(MessageRecord.survey_id.in_(survey_ids))
            .values(body=None, provider_message_id=None)
        )
        session.execute(
            update(InboundEvent).where(InboundEvent.survey_id.in_(survey_ids)).values(payload=None)
        )
    session.execute(
        update(ConsentRecord)
        .where(ConsentRecord.customer_id == customer.id)
        .values(source=None, text_version=None, evidence_ref=None)
    )
    customer.external_id = f"erased:{uuid.uuid4().hex}"
    customer.email = customer.phone = customer.first_name = None
    customer.locale = customer.timezone = None
    customer.email_status = customer.phone_status = ContactStatus.missing
    customer.erased_at = event.occurred_at
    session.flush()
    return "erased"
