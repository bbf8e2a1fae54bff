"""The stored delivery's row in the inbound ledger: finishing it (``handled_at``, the result,
the payload kept or emptied), recording a failure for the replay, queueing it, and turning it
into a dead letter."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dispatch.responses import replay_pause
from ingest.platforms.delivery import Adapter, Delivery, Received
from ingest.service import IngestResult, store_dead_letter
from models import InboundEvent
from models.erasure import erased_at

__all__ = [
    "dead_letter",
    "finish",
    "finish_in",
    "keeps",
    "queue",
    "record_failure",
    "summary",
]

log = logging.getLogger(__name__)


def summary(results: Iterable[IngestResult]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())[:40]


def keeps(session: Session, adapter: Adapter, delivery: Delivery) -> bool:
    """The raw payload stays only while it is about a customer who is not erased: a row tied to
    no one (a fulfilment, a refund) holds a delivery address no erasure could find."""
    subject = adapter.subject(delivery)
    return subject is not None and erased_at(session, subject) is None


def finish_in(session: Session, row_id: int, result: str, now: datetime, *, keep: bool) -> None:
    values: dict[str, object] = {
        "handled_at": now,
        "result": result[:40],
        "error": None,
        "retry_at": None,
    }
    if not keep:
        values.update(payload=None, subject_key=None)
    session.execute(
        update(InboundEvent)
        .where(InboundEvent.id == row_id, InboundEvent.handled_at.is_(None))
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def finish(
    factory: sessionmaker[Session], row_id: int, result: str, now: datetime, *, keep: bool
) -> None:
    with factory() as session, session.begin():
        finish_in(session, row_id, result, now, keep=keep)


def record_failure(session: Session, row_id: int, error: str, now: datetime) -> None:

    attempts = (
        session.scalar(select(InboundEvent.attempts).where(InboundEvent.id == row_id)) or 0
    ) + 1
    session.execute(
        update(InboundEvent)
        .where(InboundEvent.id == row_id)
        .values(attempts=attempts, retry_at=now + replay_pause(attempts), error=error[:2000])
    )


def dead_letter(
    factory: sessionmaker[Session],
    adapter: Adapter,
    row_id: int,
    delivery: Delivery,
    problems: list[str],
    now: datetime,
) -> Received:
    """Keep the platform's payload as a dead letter (listed by `nps-dispatch deadletters list`),
    keyed by its customer so that erasure deletes it; the raw row then keeps no payload."""
    letter: dict[str, Any] = {
        "event_id": f"{adapter.platform}:{delivery.delivery_id}",
        "platform": adapter.platform,
        "topic": delivery.topic,
        "shop": delivery.shop,
        "delivery_id": delivery.delivery_id,
        "received_at": delivery.received_at.isoformat(),
    }
    subject = adapter.subject(delivery)
    if subject is not None:
        letter["customer"] = {"id": subject}
    letter["body"] = delivery.body
    reason = f"{adapter.platform} {delivery.topic} not mapped: " + "; ".join(problems)
    letter_id = store_dead_letter(factory, letter, reason, source=adapter.platform)
    log.warning(
        "%s %s (row %s) kept as dead letter %s: %s",
        adapter.platform,
        delivery.topic,
        row_id,
        letter_id,
        "; ".join(problems)[:300],
    )
    result = f"dead letter {letter_id}"
    finish(factory, row_id, result, now, keep=False)
    return Received("dead_letter", row_id, result, dead_letter=letter_id)


def queue(factory: sessionmaker[Session], row_id: int, now: datetime) -> None:
    """Make a stored delivery due for the replay now (unless a pass holds it already)."""
    with factory() as session, session.begin():
        session.execute(
            update(InboundEvent)
            .where(
                InboundEvent.id == row_id,
                InboundEvent.handled_at.is_(None),
                InboundEvent.retry_at.is_(None),
            )
            .values(retry_at=now)
            .execution_options(synchronize_session=False)
        )
