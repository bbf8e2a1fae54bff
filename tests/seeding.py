"""Fast seeding of many due surveys with core INSERTs (for scheduler and concurrency tests)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import insert, select

from models import ConsentRecord, Customer, Order, Survey
from tests.conftest import Database


def seed_due_surveys(
    db: Database,
    n: int,
    due_at: datetime,
    *,
    channel: str = "email",
    timezone: str = "Europe/Berlin",
    config_version: str | None = None,
) -> list[int]:
    with db.session() as s, s.begin():
        s.execute(
            insert(Customer),
            [
                {
                    "external_id": f"seed-c-{i}",
                    "email": f"seed{i}@example.com",
                    "email_status": "valid",
                    "phone": f"+4915100{i:06d}",
                    "phone_status": "valid",
                    "timezone": timezone,
                    "created_at": due_at,
                    "updated_at": due_at,
                }
                for i in range(n)
            ],
        )
        customer_ids = dict(s.execute(select(Customer.external_id, Customer.id)).all())
        s.execute(
            insert(ConsentRecord),
            [
                {
                    "customer_id": customer_ids[f"seed-c-{i}"],
                    "channel": channel,
                    "granted": True,
                    "captured_at": due_at - timedelta(days=5),
                    "recorded_at": due_at - timedelta(days=5),
                    "evidence_kind": "event",
                }
                for i in range(n)
            ],
        )
        s.execute(
            insert(Order),
            [
                {
                    "external_id": f"seed-o-{i}",
                    "customer_id": customer_ids[f"seed-c-{i}"],
                    "purchased_at": due_at - timedelta(days=5),
                    "delivered_at": due_at - timedelta(days=3),
                    "total_amount": 50,
                    "currency": "EUR",
                    "category": "books",
                    "country": "DE",
                    "is_test": False,
                    "created_at": due_at,
                }
                for i in range(n)
            ],
        )
        order_ids = dict(s.execute(select(Order.external_id, Order.id)).all())
        s.execute(
            insert(Survey),
            [
                {
                    "order_id": order_ids[f"seed-o-{i}"],
                    "customer_id": customer_ids[f"seed-c-{i}"],
                    "channel": channel,
                    "state": "scheduled",
                    "state_changed_at": due_at,
                    "planned_at": due_at,
                    "anchor_kind": "delivered",
                    "anchor_at": due_at - timedelta(days=3),
                    "delay_seconds": 3 * 86400,
                    "timezone": timezone,
                    "due_at": due_at,
                    "config_version": config_version,
                    "tried_channels": channel,
                    "attempts": 0,
                    "reminders_sent": 0,
                }
                for i in range(n)
            ],
        )
        return list(s.scalars(select(Survey.id).order_by(Survey.id)))
