"""Data subject requests: export everything we hold on a customer, or erase it (GDPR 15/17)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ingest.service import IngestResult, ingest_event
from models import Answer, ConsentRecord, Customer, Order, Survey, utcnow
from worker.config import OperatorConfig


def export_customer(factory: sessionmaker[Session], external_id: str) -> dict[str, Any] | None:
    with factory() as session:
        customer = session.scalar(select(Customer).where(Customer.external_id == external_id))
        if customer is None:
            return None
        consents = session.scalars(
            select(ConsentRecord)
            .where(ConsentRecord.customer_id == customer.id)
            .order_by(ConsentRecord.captured_at)
        )
        orders = session.scalars(select(Order).where(Order.customer_id == customer.id))
        surveys = list(session.scalars(select(Survey).where(Survey.customer_id == customer.id)))
        answers = session.scalars(
            select(Answer).where(Answer.survey_id.in_([s.id for s in surveys]))
        )
        return {
            "customer": {
                "id": customer.external_id,
                "email": customer.email,
                "phone": customer.phone,
                "first_name": customer.first_name,
                "locale": customer.locale,
                "timezone": customer.timezone,
                "country": customer.country,
            },
            "consents": [
                {
                    "channel": c.channel,
                    "granted": c.granted,
                    "source": c.source,
                    "text_version": c.text_version,
                    "captured_at": c.captured_at,
                    "evidence": c.evidence_kind,
                }
                for c in consents
            ],
            "orders": [
                {
                    "id": o.external_id,
                    "purchased_at": o.purchased_at,
                    "total": o.total_amount,
                    "currency": o.currency,
                    "category": o.category,
                }
                for o in orders
            ],
            "surveys": [
                {
                    "channel": s.channel,
                    "state": s.state,
                    "sent_at": s.sent_at,
                    "score": s.score,
                    "comment": s.comment,
                }
                for s in surveys
            ],
            "answers": [
                {"score": a.score, "comment": a.comment, "received_at": a.received_at}
                for a in answers
            ],
        }


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
