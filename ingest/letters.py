"""The dead-letter store: an event we could not take, kept whole (once) for
`nps-dispatch deadletters list|replay`, keyed by the pseudonym of its customer."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from ingest import erasure
from ingest.schema import event_id_of
from models import DeadLetter

__all__ = ["store_dead_letter"]


def store_dead_letter(
    factory: sessionmaker[Session], raw: Any, error: str, source: str = "queue"
) -> int:
    """Keep an event we could not take, whole, for `nps-dispatch deadletters list|replay`.

    Once: when the same content is already waiting in the store (a failure hook that ran twice,
    or the shop sending one bad event twice), that letter's id is returned and nothing is added.
    The letter is keyed by the keyed pseudonym of its customer id, so erasure finds it; a letter
    about a customer already erased keeps only the event's non-personal fields.
    """
    event_id = event_id_of(raw)
    with factory() as session, session.begin():
        subject, kept = erasure.dead_letter_subject(session, raw)
        if kept is not raw:
            error = f"{error}; personal data not kept: customer erased"
        try:
            payload = json.dumps(kept, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            payload = repr(kept)
        if session.get_bind().dialect.name == "postgresql":
            # Two hooks storing the same letter at once queue here (SQLite has one writer).
            digest = hashlib.sha256(f"{source}\n{payload}".encode()).digest()
            key = int.from_bytes(digest[:8], "big", signed=True)
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        same_id = (
            DeadLetter.event_id.is_(None) if event_id is None else DeadLetter.event_id == event_id
        )
        waiting = session.scalar(
            select(DeadLetter.id)
            .where(
                DeadLetter.source == source,
                same_id,
                DeadLetter.payload == payload,
                DeadLetter.replayed_at.is_(None),
            )
            .order_by(DeadLetter.id)
            .limit(1)
        )
        if waiting is not None:
            return waiting
        letter = DeadLetter(
            source=source,
            event_id=event_id,
            subject_key=subject,
            payload=payload,
            error=error,
        )
        session.add(letter)
        session.flush()
        return letter.id
