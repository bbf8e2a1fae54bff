"""Store, then apply: :func:`receive` (what a platform's webhook route calls once the signature
holds) and :func:`handle` (apply one stored delivery, once, as the replay does too)."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from ingest.platforms.delivery import Adapter, Delivery, Mapped, Received, Unmappable
from ingest.platforms.ledger import (
    dead_letter,
    finish,
    finish_in,
    keeps,
    queue,
    record_failure,
    summary,
)
from ingest.platforms.redact import SHOP_ERASE_PER_PASS, erase_shop, with_redaction
from ingest.service import IngestResult, ingest_in_session
from models import InboundEvent, utcnow
from models.erasure import subject_key
from models.inbound import claim_inbound_event

__all__ = ["handle", "receive"]

log = logging.getLogger(__name__)


def receive(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    adapter: Adapter,
    delivery: Delivery,
    *,
    now: datetime | None = None,
) -> Received:
    """Store, then apply: what a platform's webhook route calls once the signature holds."""
    now = now or utcnow()
    subject = adapter.subject(delivery)
    with factory() as session, session.begin():
        row_id = claim_inbound_event(
            session,
            source=adapter.platform,
            external_id=delivery.ledger_id,
            event_type=delivery.topic[:40],
            subject_key=subject_key(subject) if subject else None,
            payload=delivery.payload(),
        )
        if row_id is None:
            existing = session.execute(
                select(InboundEvent.id, InboundEvent.handled_at).where(
                    InboundEvent.source == adapter.platform,
                    InboundEvent.external_id == delivery.ledger_id,
                )
            ).one()
            if existing.handled_at is not None:
                return Received("duplicate", existing.id, "already received")
            row_id = existing.id  # an earlier attempt failed: this redelivery tries again
    return handle(factory, config, adapter, row_id, now=now, in_request=True)


def handle(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    adapter: Adapter,
    row_id: int,
    *,
    now: datetime | None = None,
    in_request: bool = False,
    shop_erase_limit: int = SHOP_ERASE_PER_PASS,
) -> Received:
    """Apply one stored delivery, once.

    A ``shop/redact`` is not carried out ``in_request`` (the platform's webhook call): erasing
    a whole shop can take minutes, longer than the platform waits for its answer. The stored
    delivery is left unhandled and due at once, and the replay (:func:`replay_unhandled`, on
    every scheduler pass) erases at most ``shop_erase_limit`` customers a pass until none is
    left (:func:`erase_shop`)."""
    now = now or utcnow()
    with factory() as session:
        row = session.get(InboundEvent, row_id)
        if row is None or row.handled_at is not None:
            return Received("already", row_id)
        payload = row.payload
    if not isinstance(payload, dict):
        finish(factory, row_id, "payload erased", now, keep=False)
        return Received("applied", row_id, "payload erased")
    delivery = Delivery.from_payload(adapter.platform, payload)
    try:
        mapped = adapter.map(delivery, config)
    except Unmappable as exc:
        return dead_letter(factory, adapter, row_id, delivery, [str(exc)], now)
    if mapped.erase_shop:
        if in_request:
            queue(factory, row_id, now)
            log.warning(
                "%s %s of shop %s stored (row %s): the scheduler erases the shop",
                adapter.platform,
                delivery.topic,
                delivery.shop,
                row_id,
            )
            return Received("queued", row_id, "shop erasure queued")
        return erase_shop(factory, config, adapter, row_id, delivery, now, shop_erase_limit)
    return _ingest(factory, config, adapter, row_id, delivery, mapped, now)


def _ingest(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    adapter: Adapter,
    row_id: int,
    delivery: Delivery,
    mapped: Mapped,
    now: datetime,
) -> Received:
    results: list[IngestResult] = []
    with factory() as session, session.begin():
        locked = session.scalar(
            select(InboundEvent.id)
            .where(InboundEvent.id == row_id, InboundEvent.handled_at.is_(None))
            .with_for_update()
        )
        if locked is None:
            return Received("already", row_id)
        events = with_redaction(session, adapter, delivery, mapped)
        results = [ingest_in_session(session, event, config, now) for event in events]
        failed = [r for r in results if r.retryable]
        if failed:
            record_failure(session, row_id, "; ".join(r.outcome or "error" for r in failed), now)
            log.warning(
                "%s %s (row %s) not applied; the platform's retry or the replay applies it",
                adapter.platform,
                delivery.topic,
                row_id,
            )
            return Received("failed", row_id, "not applied", tuple(results))
        rejected = [r for r in results if r.status == "rejected"]
        if not rejected:
            result = summary(results) or mapped.result
            finish_in(session, row_id, result, now, keep=keeps(session, adapter, delivery))
    if mapped.notice:
        log.warning("%s (webhook row %s)", mapped.notice, row_id)
    if rejected:
        problems = [f"{r.event_id}: {r.error}" for r in rejected]
        dead = dead_letter(factory, adapter, row_id, delivery, problems, now)
        return Received("dead_letter", row_id, dead.result, tuple(results), dead.dead_letter)
    return Received("applied", row_id, summary(results) or mapped.result, tuple(results))
