"""Data subject requests: export everything we hold on a customer, or erase it (GDPR 15/17).

``models.personal_data`` lists every column that can hold personal data; the export holds every
value of those columns kept about the customer, and erasure empties them (both are tested
against that list).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from ingest.erasure import rekey_legacy
from ingest.service import IngestResult, ingest_event
from models import (
    Answer,
    ConsentRecord,
    Customer,
    DeadLetter,
    InboundEvent,
    MessageRecord,
    Order,
    Survey,
    utcnow,
)
from models.erasure import subject_key
from models.privacy import Pseudonymiser

log = logging.getLogger(__name__)


def export_customer(factory: sessionmaker[Session], external_id: str) -> dict[str, Any] | None:
    """Everything held about the customer with this shop id, or ``None`` when there is none."""
    with factory() as session:
        customer = session.scalar(select(Customer).where(Customer.external_id == external_id))
        if customer is None:
            return None
        subject = subject_key(external_id)
        surveys = list(
            session.scalars(
                select(Survey).where(Survey.customer_id == customer.id).order_by(Survey.id)
            )
        )
        survey_ids = [s.id for s in surveys]
        return {
            "customer": {
                "id": customer.external_id,
                "email": customer.email,
                "phone": customer.phone,
                "phone_timezone": customer.phone_timezone,
                "first_name": customer.first_name,
                "locale": customer.locale,
                "timezone": customer.timezone,
                "country": customer.country,
                "previous_orders": customer.previous_orders,
            },
            "consents": _consents(session, customer.id),
            "orders": _orders(session, customer.id),
            "surveys": [
                {
                    "channel": s.channel,
                    "state": s.state,
                    "timezone": s.timezone,
                    "sent_at": s.sent_at,
                    "provider": s.provider,
                    "provider_message_id": s.provider_message_id,
                    "score": s.score,
                    "comment": s.comment,
                    "answered_at": s.answered_at,
                }
                for s in surveys
            ],
            "answers": _answers(session, survey_ids),
            "messages": _messages(session, survey_ids),
            "provider_events": _provider_events(session, subject, survey_ids),
            "dead_letters": _dead_letters(session, subject),
        }


def _consents(session: Session, customer_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(ConsentRecord)
        .where(ConsentRecord.customer_id == customer_id)
        .order_by(ConsentRecord.captured_at, ConsentRecord.id)
    )
    return [
        {
            "channel": c.channel,
            "granted": c.granted,
            "source": c.source,
            "text_version": c.text_version,
            "captured_at": c.captured_at,
            "evidence": c.evidence_kind,
            "evidence_ref": c.evidence_ref,
        }
        for c in rows
    ]


def _orders(session: Session, customer_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(Order).where(Order.customer_id == customer_id).order_by(Order.id))
    return [
        {
            "id": o.external_id,
            "purchased_at": o.purchased_at,
            "total": o.total_amount,
            "currency": o.currency,
            "category": o.category,
        }
        for o in rows
    ]


def _answers(session: Session, survey_ids: list[int]) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(Answer).where(Answer.survey_id.in_(survey_ids)).order_by(Answer.id)
    )
    return [
        {"score": a.score, "comment": a.comment, "via": a.via, "received_at": a.received_at}
        for a in rows
    ]


def _messages(session: Session, survey_ids: list[int]) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(MessageRecord)
        .where(MessageRecord.survey_id.in_(survey_ids))
        .order_by(MessageRecord.id)
    )
    return [
        {
            "kind": m.kind,
            "channel": m.channel,
            "provider": m.provider,
            "provider_message_id": m.provider_message_id,
            "status": m.status,
            "body": m.body,
            "created_at": m.created_at,
        }
        for m in rows
    ]


def _provider_events(session: Session, subject: str, survey_ids: list[int]) -> list[dict[str, Any]]:
    """Raw webhooks about them still holding their payload (emptied after the retention)."""
    rows = session.scalars(
        select(InboundEvent)
        .where(
            InboundEvent.payload.is_not(None),
            or_(InboundEvent.subject_key == subject, InboundEvent.survey_id.in_(survey_ids)),
        )
        .order_by(InboundEvent.id)
    )
    return [
        {
            "source": e.source,
            "type": e.event_type,
            "received_at": e.received_at,
            "payload": e.payload,
        }
        for e in rows
    ]


def _dead_letters(session: Session, subject: str) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(DeadLetter).where(DeadLetter.subject_key == subject).order_by(DeadLetter.id)
    )
    return [
        {
            "event_id": d.event_id,
            "received_at": d.created_at,
            "error": d.error,
            "event": _parsed(d.payload),
        }
        for d in rows
    ]


def _parsed(payload: str) -> Any:
    try:
        return json.loads(payload)
    except json.JSONDecodeError:
        return payload  # kept as received when it was not JSON


def erase_customer(
    factory: sessionmaker[Session], external_id: str, config: OperatorConfig
) -> IngestResult:
    """Erase through the same path as the shop's `customer.erased` event."""
    event = {
        "type": "customer.erased",
        "event_id": f"cli-erase-{uuid.uuid4().hex}",
        "occurred_at": utcnow().isoformat(),
        "customer": {"id": external_id},
    }
    return ingest_event(factory, event, config)


def rekey_legacy_pseudonyms(factory: sessionmaker[Session], pseudo: Pseudonymiser) -> int | None:
    """Re-key the tombstones written before tombstones were keyed (``ingest.erasure.rekey_legacy``),
    in batches, each in its own transaction. Returns how many values were re-keyed, or ``None``
    when the database failed (logged; the next process start retries). Callers run it only
    under ``NPS_SECRET_KEY``: a per-process key would orphan every tombstone it wrote. Until it
    has run, the old tombstones still refuse late events."""
    total = 0
    try:
        while True:
            with factory() as session, session.begin():
                done = rekey_legacy(session, pseudo)
            total += done
            if not done:
                break
    except SQLAlchemyError as exc:
        log.warning("pseudonyms stored before keying not re-keyed yet: %s", type(exc).__name__)
        return None
    if total:
        log.info("re-keyed %d erasure tombstones written before tombstones were keyed", total)
    return total
