"""Shop events that came by the queue, many in one message: applied as one batch, each bad one
kept as its own dead letter.

An event refused for its content (invalid, or an ``event_id`` reused for other content) becomes
a dead letter at once: sending it again cannot help. An event whose application failed on our
side makes the whole message run again: the events already applied are then duplicates, so
nothing happens twice. After the last attempt every event the ledger does not hold with its own
content becomes a dead letter (:func:`store_unapplied`): one missing from it, and one whose
``event_id`` is held for other content (a conflict, never applied).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from ingest.apply import SHOP_SOURCE
from ingest.schema import EventRejected, event_id_of, fingerprint, parse_event
from ingest.service import IngestResult, ingest_batch, store_dead_letter
from models import InboundEvent, utcnow

__all__ = ["QueuedBatch", "ingest_queued", "store_unapplied"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueuedBatch:
    results: list[IngestResult]
    dead_letters: list[int]
    retry: str | None = None  # why the message should run again; None when it is done


def ingest_queued(
    factory: sessionmaker[Session], events: Sequence[Any], config: OperatorConfig
) -> QueuedBatch:
    """Apply the events of one message; store the refused ones as dead letters."""
    results = ingest_batch(factory, events, config)
    letters = []
    for event, result in zip(events, results, strict=True):
        if result.status in ("rejected", "conflict") and not result.retryable:
            letter = store_dead_letter(factory, event, result.error or result.status)
            log.warning("event %s %s (dead letter %s)", result.event_id, result.status, letter)
            letters.append(letter)
    failed = [r for r in results if r.retryable]
    retry = None
    if failed:
        retry = f"{len(failed)} of {len(results)} events not applied: {failed[0].outcome}"
    return QueuedBatch(results, letters, retry)


def store_unapplied(
    factory: sessionmaker[Session],
    events: Sequence[Any],
    error: str,
    now: datetime | None = None,
) -> list[int]:
    """The last attempt of a message failed: a dead letter for each of its events that was not
    applied. An event counts as applied only when the ledger holds its ``event_id`` with its own
    content (or with none left, once its subject was erased); an invalid event, or one whose
    ``event_id`` is held for other content, was refused and is kept (once) like a missing one."""
    now = now or utcnow()
    ids = sorted({i for event in events if (i := event_id_of(event)) is not None})
    with factory() as session:
        held: dict[str, str | None] = {
            external_id: digest
            for external_id, digest in session.execute(
                select(InboundEvent.external_id, InboundEvent.fingerprint).where(
                    InboundEvent.source == SHOP_SOURCE, InboundEvent.external_id.in_(ids)
                )
            )
        }
    return [
        store_dead_letter(factory, event, error)
        for event in events
        if not _applied(event, held, now)
    ]


def _applied(raw: Any, held: dict[str, str | None], now: datetime) -> bool:
    event_id = event_id_of(raw)
    if event_id is None or event_id not in held:
        return False
    try:
        event = parse_event(raw, now=now)
    except EventRejected:
        return False
    recorded = held[event_id]
    return recorded is None or recorded == fingerprint(event)
