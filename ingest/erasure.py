"""Erasure (GDPR art. 17) of one shop customer, and what erasure leaves of later events about
them: tombstones, unlinked ledger rows, dead letters keyed to no one, emptied raw webhooks and
platform deliveries. Re-keying of tombstones stored before pseudonyms were keyed."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Text, and_, cast, delete, func, or_, select, update
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql.elements import ColumnElement

from dispatch.responses import WEBHOOK_SOURCES
from ingest.apply import PLATFORM_SOURCES, ApplyContext, lock_customer
from ingest.schema import CustomerErased
from models import (
    Answer,
    ConsentRecord,
    Customer,
    DeadLetter,
    ErasedSubject,
    InboundEvent,
    MessageRecord,
    Survey,
    SurveyState,
    move,
)
from models.customers import ContactStatus
from models.erasure import erased_at, forget_subject, lock_subject, subject_key
from models.lifecycle import UNSENT_STATES
from models.privacy import (
    ERASED_PREFIX,
    LEGACY_TOMBSTONE_PREFIX,
    Pseudonymiser,
    legacy_tombstone,
    pseudonymiser,
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
    customer = lock_customer(session, key)
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
    customer.locale = customer.timezone = customer.phone_timezone = None
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
