"""Shop events that came by the queue, many in one message: applied as one batch, each bad one
kept as its own dead letter.

An event refused for its content (invalid, or an ``event_id`` reused for other content) becomes
a dead letter at once: sending it again cannot help. An event whose application failed on our
side makes the whole message run again: the events already applied are then duplicates, so
nothing happens twice. After the last attempt only the events the ledger does not hold become
dead letters (:func:`store_unapplied`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from ingest.apply import SHOP_SOURCE
from ingest.schema import event_id_of
from ingest.service import IngestResult, ingest_batch, store_dead_letter
from models import InboundEvent

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


def store_unapplied(factory: sessionmaker[Session], events: Sequence[Any], error: str) -> list[int]:
    """The last attempt of a message failed: a dead letter for each of its events that the
    ledger does not hold (applied ones are not lost; refused ones are stored once)."""
    ids = sorted({i for event in events if (i := event_id_of(event)) is not None})
    with factory() as session:
        held = set(
            session.scalars(
                select(InboundEvent.external_id).where(
                    InboundEvent.source == SHOP_SOURCE, InboundEvent.external_id.in_(ids)
                )
            )
        )
    return [
        store_dead_letter(factory, event, error)
        for event in events
        if event_id_of(event) is None or event_id_of(event) not in held
    ]
