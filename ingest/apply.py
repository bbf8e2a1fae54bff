"""What each shop event does to the database. Called inside the event's own transaction."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Text, and_, cast, delete, func, or_, select, update
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql.elements import ColumnElement

from config import OperatorConfig
from dispatch import planning
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
from models.base import insert_ignoring_conflict
from models.customers import ContactStatus, record_consent
from models.erasure import erased_at, lock_subject, subject_key
from models.lifecycle import UNSENT_STATES
from models.privacy import (
    ERASED_PREFIX,
    LEGACY_TOMBSTONE_PREFIX,
    Pseudonymiser,
    legacy_tombstone,
    pseudonymiser,
)


@dataclass(frozen=True, slots=True)
class ApplyContext:
    config: OperatorConfig
    now: datetime


def _lock_customer(session: Session, external_id: str) -> Customer | None:
    # FOR UPDATE serialises concurrent events about one customer on PostgreSQL (the frequency
    # cap and consent checks read-then-write); SQLite already has a single writer.
    return session.scalar(
        select(Customer).where(Customer.external_id == external_id).with_for_update()
    )


def upsert_customer(session: Session, data: CustomerIn) -> Customer:
    customer = _lock_customer(session, data.id)
    if customer is None:
        session.execute(
            insert_ignoring_conflict(
                session,
                Customer,
                ["external_id"],
                {"external_id": data.id},
            )
        )
        customer = _lock_customer(session, data.id)
        if customer is None:  # pragma: no cover - the row was just inserted or committed
            raise RuntimeError("customer row missing after insert")
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
    if order.purchased_at is not None:
        return "order already recorded"  # a second purchase event for one order plans nothing
    tombstone = erased_at(session, event.customer.id)
    if tombstone is not None and event.occurred_at <= tombstone:
        # A late event about an erased customer: count the purchase, keep no personal data
        # (nor a ledger row tied to them).
        _fill_order(order, event, customer_id=None)
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
        planning.on_consent_revoked(session, customer, ch, ctx.config, ctx.now) for ch in revoked
    ]
    return "; ".join(o for o in outcomes if o) or event.type.removeprefix("consent.")


def forget_subject(session: Session, subject: str) -> None:
    """Unlink the ledger rows about a subject (by its keyed pseudonym): no payload, subject key,
    survey or content digest stays; the event's id, type and result do, so a late copy of it is
    still recognised. For erasure, and for a late event refused because of a tombstone."""
    session.execute(
        update(InboundEvent)
        .where(InboundEvent.subject_key == subject)
        .values(payload=None, subject_key=None, survey_id=None, fingerprint=None)
        .execution_options(synchronize_session=False)
    )


_KEPT_OF_AN_ERASED_EVENT = ("type", "event_id", "occurred_at", "order_id")


def dead_letter_subject(session: Session, raw: Any) -> tuple[str | None, Any]:
    """A dead letter's subject key (the keyed pseudonym of its event's customer id) and what of
    the event may be kept. About a customer already erased, and not dated after the erasure,
    only the event's non-personal fields are kept, keyed to no one: erasure has passed and would
    not come back for it."""
    customer = raw.get("customer") if isinstance(raw, dict) else None
    customer_id = customer.get("id") if isinstance(customer, dict) else None
    if customer_id is None or isinstance(customer_id, dict | list):
        return None, raw
    erased = erased_at(session, str(customer_id))
    if erased is None or _dated_after(raw.get("occurred_at"), erased):
        return subject_key(str(customer_id)), raw
    return None, {k: raw[k] for k in _KEPT_OF_AN_ERASED_EVENT if k in raw}


def _dated_after(value: object, moment: datetime) -> bool:
    if not isinstance(value, str):
        return False
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return False
    return at.tzinfo is not None and at > moment


def _write_tombstone(session: Session, customer_external_id: str, at: datetime) -> None:
    """The keyed tombstone, erased at the latest erasure date known; an unkeyed one of the same
    id is replaced."""
    key = subject_key(customer_external_id)
    legacy = session.get(ErasedSubject, legacy_tombstone(customer_external_id))
    if legacy is not None:
        at = max(at, legacy.erased_at)
        session.delete(legacy)
    tombstone = session.get(ErasedSubject, key)
    if tombstone is None:
        session.add(ErasedSubject(subject_hash=key, erased_at=at))
    elif tombstone.erased_at < at:
        tombstone.erased_at = at
    session.flush()


def _contains(
    column: QueryableAttribute[Any], needle: str, *, fold: bool = False
) -> ColumnElement[bool]:
    text = cast(column, Text)
    if fold:
        return func.lower(text).contains(needle.lower(), autoescape=True)
    return text.contains(needle, autoescape=True)


PLATFORM_SOURCES: Final = ("shopify", "woocommerce")
"""The ledger sources of the shop platforms' webhooks (``ingest/shopify``,
``ingest/woocommerce``; ``ingest.platforms.Adapter`` takes no other)."""
# A privacy request stored but not applied yet is not closed by an erasure: it is itself an
# order to erase (a customers/redact also names guest records and orders), and it empties its
# own payload once applied.
_PRIVACY_REQUESTS: Final = ("customers/redact", "shop/redact")


def _contacts(customer: Customer | None) -> list[str]:
    return [c for c in (customer.email, customer.phone) if c] if customer else []


def _close_pending_deliveries(
    session: Session, subject: str, customer: Customer | None, now: datetime
) -> None:
    """Shop platform deliveries stored but not applied yet (a failure on our side waiting for
    its replay, or the platform's redelivery) that are about the person: keyed to them, or
    naming their address or number (a guest checkout of theirs, keyed to another id). Applied
    later, one would bring them back, so each is emptied and closed as handled, result
    ``erased``: the replay passes it by and a redelivery of it is a duplicate. Applying one
    that is already under way checks ``handled_at`` again under its row lock, so it stops."""
    about = [
        InboundEvent.subject_key == subject,
        *(_contains(InboundEvent.payload, c, fold=True) for c in _contacts(customer)),
    ]
    session.execute(
        update(InboundEvent)
        .where(
            InboundEvent.source.in_(PLATFORM_SOURCES),
            InboundEvent.handled_at.is_(None),
            InboundEvent.event_type.not_in(_PRIVACY_REQUESTS),
            or_(*about),
        )
        .values(
            payload=None,
            subject_key=None,
            handled_at=now,
            result="erased",
            error=None,
            retry_at=None,
        )
        .execution_options(synchronize_session=False)
    )


def _forget_unattributed(
    session: Session, subject: str, customer_external_id: str, customer: Customer | None
) -> None:
    """Rows that name the person without being keyed to them: provider webhooks stored but not
    applied yet (keyed only once applied), and dead letters without a subject key (written
    before keys existed, or whose event had no usable customer id). Both are few, so their text
    is searched for the person's id, address and number. (Shop platform deliveries not applied
    yet: :func:`_close_pending_deliveries`.)"""
    from dispatch.responses import WEBHOOK_SOURCES  # it imports this module

    contacts = _contacts(customer)
    pending = [_contains(InboundEvent.payload, c, fold=True) for c in contacts]
    if pending:
        session.execute(
            update(InboundEvent)
            .where(
                InboundEvent.source.in_(WEBHOOK_SOURCES),
                InboundEvent.handled_at.is_(None),
                InboundEvent.payload.is_not(None),
                or_(*pending),
            )
            .values(payload=None)
            .execution_options(synchronize_session=False)
        )
    quoted_id = json.dumps(customer_external_id, ensure_ascii=False)
    unkeyed = [
        _contains(DeadLetter.payload, quoted_id),
        *(_contains(DeadLetter.payload, c, fold=True) for c in contacts),
    ]
    session.execute(
        delete(DeadLetter)
        .where(
            or_(
                DeadLetter.subject_key == subject,
                and_(DeadLetter.subject_key.is_(None), or_(*unkeyed)),
            )
        )
        .execution_options(synchronize_session=False)
    )


def apply_erasure(session: Session, event: CustomerErased, ctx: ApplyContext) -> str:
    """GDPR art. 17: remove personal data; keep anonymised counts (orders, scores, outcomes).

    Every column ``models.personal_data`` lists is emptied on the rows about the person; the
    customer row keeps a random ``erased:`` id in place of the shop's. Comments are emptied,
    scores kept. Ledger rows about them keep only the event's id, type and result. Dead letters
    about them are deleted. The tombstone is a keyed pseudonym of the id.

    Unsent surveys end ``withdrawn``. A survey in ``sending`` is left to its sender, which
    re-checks after its rate limit wait (still unsent: ``withdrawn``) and, when the provider took
    the message meanwhile, records ``sent`` without the provider's message id or the body: the
    invitation went out and is counted, nothing personal is kept. The sender reads the customer
    row under a share lock, and this erasure holds it ``FOR UPDATE``, so the sender either sees
    the erasure or commits first and has its personal columns emptied below. No reminder goes to
    an erased customer."""
    key = event.customer.id
    subject = subject_key(key)
    lock_subject(session, key)
    customer = _lock_customer(session, key)
    _write_tombstone(session, key, event.occurred_at)
    _close_pending_deliveries(session, subject, customer, ctx.now)
    forget_subject(session, subject)  # this event's own ledger row included
    _forget_unattributed(session, subject, key, customer)
    # Again: a webhook being applied when this erasure began (an SMS from their number, say)
    # held its row, so the search above waited for it; it has now committed, keyed to them.
    forget_subject(session, subject)
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
            .values(comment=None, provider_message_id=None, next_reminder_at=None, timezone=None)
        )
        session.execute(update(Answer).where(Answer.survey_id.in_(survey_ids)).values(comment=None))
        session.execute(
            update(MessageRecord)
            .where(MessageRecord.survey_id.in_(survey_ids))
            .values(body=None, provider_message_id=None)
        )
        session.execute(
            update(InboundEvent)
            .where(InboundEvent.survey_id.in_(survey_ids))
            .values(payload=None, subject_key=None, survey_id=None, fingerprint=None)
            .execution_options(synchronize_session=False)
        )
    session.execute(
        update(ConsentRecord)
        .where(ConsentRecord.customer_id == customer.id)
        .values(source=None, text_version=None, evidence_ref=None)
    )
    customer.external_id = f"{ERASED_PREFIX}{uuid.uuid4().hex}"
    customer.email = customer.phone = customer.first_name = None
    customer.locale = customer.timezone = None
    customer.email_status = customer.phone_status = ContactStatus.missing
    customer.erased_at = event.occurred_at
    session.flush()
    return "erased"


def rekey_legacy(session: Session, pseudo: Pseudonymiser | None = None, limit: int = 1000) -> int:
    """Re-key up to ``limit`` tombstones written before tombstones were keyed; returns how many.

    Migration 0003 could not know the key: it marked the old tombstones (``sha256:`` and the
    bare SHA-256 of the id), which :func:`erased_at` still honours. With the key at hand each
    becomes the keyed pseudonym of the same id, computed from the old digest (the id itself is
    never needed). Idempotent; 0 once none is left."""
    pseudo = pseudo or pseudonymiser()
    legacy = session.scalars(
        select(ErasedSubject)
        .where(ErasedSubject.subject_hash.startswith(LEGACY_TOMBSTONE_PREFIX))
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for old in legacy:
        new_key = pseudo.rekey(old.subject_hash)
        keyed = session.get(ErasedSubject, new_key)
        if keyed is None:
            session.add(ErasedSubject(subject_hash=new_key, erased_at=old.erased_at))
        elif keyed.erased_at < old.erased_at:
            keyed.erased_at = old.erased_at
        session.delete(old)
    session.flush()
    return len(legacy)
