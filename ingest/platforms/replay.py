"""Applying again what did not apply: :func:`replay_unhandled` (stored deliveries whose
application failed or never ran, on every scheduler pass) and :func:`replay_dead_letter` (a
platform's dead letter, mapped again once its cause is gone)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from ingest.platforms.delivery import Adapter, Delivery, Unmappable
from ingest.platforms.ledger import summary
from ingest.platforms.receive import handle
from ingest.platforms.redact import SHOP_ERASE_PER_PASS, with_redaction
from ingest.service import IngestResult, ingest_batch
from models import InboundEvent, utcnow

__all__ = ["replay_dead_letter", "replay_unhandled"]

log = logging.getLogger(__name__)

_REPLAY_MAX_ATTEMPTS: Final = 20  # about three days of doubling pauses, as for provider webhooks


def replay_dead_letter(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    adapter: Adapter,
    letter: Mapping[str, Any],
    *,
    stored_at: datetime,
    now: datetime | None = None,
) -> IngestResult:
    """Map a platform's dead letter again and ingest its events (``nps-dispatch deadletters
    replay``): a payload the schema refused (a date too far ahead) or that an older version
    could not map is taken once the cause is gone. One result for the letter: ``accepted`` (its
    events were applied, or it maps to no event: the outcome says why), ``duplicate`` (all of
    them were applied already), else ``rejected`` or ``conflict`` with the reasons, and the
    letter stays. Letters written before they kept the delivery's time are dated by when they
    were stored."""
    event_id = str(letter.get("event_id") or "") or None
    received = letter.get("received_at")
    try:
        received_at = datetime.fromisoformat(received) if isinstance(received, str) else None
    except ValueError:
        received_at = None
    if received_at is None or received_at.tzinfo is None:
        received_at = stored_at if stored_at.tzinfo else stored_at.replace(tzinfo=UTC)
    delivery = Delivery(
        platform=adapter.platform,
        delivery_id=str(
            letter.get("delivery_id") or (event_id or "").removeprefix(f"{adapter.platform}:")
        ),
        topic=str(letter.get("topic") or ""),
        shop=str(letter.get("shop") or ""),
        body=letter.get("body"),
        received_at=received_at,
    )
    try:
        mapped = adapter.map(delivery, config)
    except Unmappable as exc:
        problem = f"{adapter.platform} {delivery.topic} not mapped: {exc}"
        return IngestResult(event_id, "rejected", error=problem)
    if mapped.erase_shop:
        # Only a request without its shop becomes a dead letter, and it cannot be mapped.
        problem = "a shop erasure is carried out from its stored webhook, not from a dead letter"
        return IngestResult(event_id, "rejected", error=problem)
    with factory() as session:
        events = with_redaction(session, adapter, delivery, mapped)
    results = ingest_batch(factory, events, config, now) if events else []
    if mapped.notice:
        log.warning("%s (dead letter replay)", mapped.notice)
    failed = [r for r in results if r.retryable]
    if failed:
        label = "; ".join(r.outcome or "error" for r in failed)
        return IngestResult(
            event_id, "rejected", error=failed[0].error, outcome=label, retryable=True
        )
    for status in ("rejected", "conflict"):
        refused = [r for r in results if r.status == status]
        if refused:
            problems = "; ".join(f"{r.event_id}: {r.error}" for r in refused)
            return IngestResult(event_id, refused[0].status, error=problems)
    if results and all(r.status == "duplicate" for r in results):
        return IngestResult(event_id, "duplicate", outcome="already applied")
    return IngestResult(event_id, "accepted", outcome=summary(results) or mapped.result)


def replay_unhandled(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    adapters: Iterable[Adapter],
    *,
    now: datetime | None = None,
    limit: int = 500,
    shop_erase_limit: int = SHOP_ERASE_PER_PASS,
) -> int:
    """Apply the stored deliveries whose application failed, once their pause has passed, and
    those never attempted (the process died between storing and applying) after a minute. A
    platform that does not retry, like WooCommerce, relies on this. Returns how many were
    applied; rows that failed too often are left, with their error, for an operator."""
    now = now or utcnow()
    by_platform = {adapter.platform: adapter for adapter in adapters}
    with factory() as session:
        rows = session.execute(
            select(InboundEvent.id, InboundEvent.source)
            .where(
                InboundEvent.source.in_(list(by_platform)),
                InboundEvent.handled_at.is_(None),
                InboundEvent.attempts < _REPLAY_MAX_ATTEMPTS,
                or_(
                    InboundEvent.retry_at <= now,
                    and_(
                        InboundEvent.retry_at.is_(None),
                        InboundEvent.received_at <= now - timedelta(minutes=1),
                    ),
                ),
            )
            .order_by(InboundEvent.id)
            .limit(limit)
        ).all()
    applied = 0
    for row_id, source in rows:
        received = handle(
            factory,
            config,
            by_platform[source],
            row_id,
            now=now,
            shop_erase_limit=shop_erase_limit,
        )
        applied += received.status in ("applied", "dead_letter")
    return applied
