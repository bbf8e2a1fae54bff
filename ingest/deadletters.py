"""Dead letters: list them, and replay them through the normal ingest path.

A letter of a shop platform's webhook (source ``shopify`` or ``woocommerce``: a payload that
could not be mapped, or whose events the schema refused) holds the platform's payload, not one
of our events: it is replayed through its platform's adapter, mapped again, then ingested."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from ingest import platforms, shopify, woocommerce
from ingest.service import IngestResult, ingest_event
from models import DeadLetter, utcnow

PLATFORM_ADAPTERS: Final = {
    adapter.platform: adapter for adapter in (shopify.ADAPTER, woocommerce.ADAPTER)
}


def list_dead_letters(
    factory: sessionmaker[Session], *, include_replayed: bool = False, limit: int = 100
) -> list[DeadLetter]:
    with factory() as session:
        query = select(DeadLetter).order_by(DeadLetter.id).limit(limit)
        if not include_replayed:
            query = query.where(DeadLetter.replayed_at.is_(None))
        return list(session.scalars(query))


def replay_dead_letters(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    ids: list[int] | None = None,
    *,
    now: datetime | None = None,
) -> list[tuple[int, IngestResult]]:
    """Ingest each letter again (a platform's letter through its adapter). Accepted or
    duplicate letters are marked replayed; a letter that is still rejected, or conflicts with
    the event recorded under its id, stays listed with the new error."""
    with factory() as session:
        query = select(DeadLetter).where(DeadLetter.replayed_at.is_(None)).order_by(DeadLetter.id)
        if ids:
            query = query.where(DeadLetter.id.in_(ids))
        letters = list(session.scalars(query))
    results: list[tuple[int, IngestResult]] = []
    for letter in letters:
        try:
            raw = json.loads(letter.payload)
        except json.JSONDecodeError as exc:
            result = IngestResult(letter.event_id, "rejected", error=f"payload is not JSON: {exc}")
        else:
            adapter = PLATFORM_ADAPTERS.get(letter.source)
            if adapter is not None and isinstance(raw, dict):
                result = platforms.replay_dead_letter(
                    factory, config, adapter, raw, stored_at=letter.created_at, now=now
                )
            else:
                result = ingest_event(factory, raw, config, now)
        with factory() as session, session.begin():
            row = session.get(DeadLetter, letter.id)
            if row is None:
                raise LookupError(f"dead letter {letter.id} was deleted while it was replayed")
            row.replay_result = result.status
            if result.status in ("rejected", "conflict"):
                # A failure on our side is described by its kind, not by the client's message.
                row.error = (result.outcome if result.retryable else result.error) or row.error
            else:
                row.replayed_at = utcnow()
        results.append((letter.id, result))
    return results
