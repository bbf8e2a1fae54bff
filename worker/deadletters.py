"""Dead letters: list them, and replay them through the normal ingest path."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ingest.service import IngestResult, ingest_event
from models import DeadLetter, utcnow
from worker.config import OperatorConfig


def list_dead_letters(
    factory: sessionmaker[Session], *, include_replayed: bool = False, limit: int = 100
) -> list[DeadLetter]:
    with factory() as session:
        query = select(DeadLetter).order_by(DeadLetter.id).limit(limit)
        if not include_replayed:
            query = query.where(DeadLetter.replayed_at.is_(None))
        return list(session.scalars(query))


def replay_dead_letters(
    factory: sessionmaker[Session], config: OperatorConfig, ids: list[int] | None = None
) -> list[tuple[int, IngestResult]]:
    """Ingest each letter again. Accepted or duplicate letters are marked replayed; a letter that
    is still rejected, or conflicts with the event recorded under its id, stays listed with the
    new error."""
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
            result = ingest_event(factory, raw, config)
        with factory() as session, session.begin():
            row = session.get(DeadLetter, letter.id)
            assert row is not None
            row.replay_result = result.status
            if result.status in ("rejected", "conflict"):
                # A failure on our side is described by its kind, not by the client's message.
                row.error = (result.outcome if result.retryable else result.error) or row.error
            else:
                row.replayed_at = utcnow()
        results.append((letter.id, result))
    return results
