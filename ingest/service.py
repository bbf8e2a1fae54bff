"""One validation and one idempotency for every path in: queue, HTTP and file.

Each event is validated (nothing is written for a bad one), then claimed in the inbound ledger
under its ``event_id`` and applied in the same transaction: a duplicate claims nothing and
changes nothing, and a failure while applying rolls the claim back with everything else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.orm import Session, sessionmaker

from ingest import apply
from ingest.schema import (
    ConsentEvent,
    CustomerErased,
    EventRejected,
    OrderEvent,
    PurchaseCompleted,
    event_id_of,
    parse_event,
)
from models import DeadLetter, utcnow
from models.inbound import claim_inbound_event
from worker.config import OperatorConfig

log = logging.getLogger(__name__)

SHOP_SOURCE = "shop"
Status = Literal["accepted", "duplicate", "rejected"]


@dataclass(frozen=True, slots=True)
class IngestResult:
    event_id: str | None
    status: Status
    error: str | None = None
    outcome: str | None = None  # what the event did, for the CLI and the logs

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "status": self.status}
        if self.error is not None:
            out["error"] = self.error
        return out


ShopEvent = PurchaseCompleted | OrderEvent | ConsentEvent | CustomerErased


def _subject(event: ShopEvent) -> str | None:
    return getattr(getattr(event, "customer", None), "id", None)


def _apply(session: Session, event: ShopEvent, ctx: apply.ApplyContext) -> str:
    if isinstance(event, PurchaseCompleted):
        return apply.apply_purchase(session, event, ctx)
    if isinstance(event, OrderEvent):
        return apply.apply_order_event(session, event, ctx)
    if isinstance(event, ConsentEvent):
        return apply.apply_consent_event(session, event, ctx)
    return apply.apply_erasure(session, event, ctx)


def ingest_in_session(
    session: Session, raw: Any, config: OperatorConfig, now: datetime | None = None
) -> IngestResult:
    """Validate and apply one event inside a SAVEPOINT of ``session``."""
    try:
        event = parse_event(raw)
    except EventRejected as exc:
        return IngestResult(event_id_of(raw), "rejected", error=str(exc))
    ctx = apply.ApplyContext(config=config, now=now or utcnow())
    with session.begin_nested():
        claimed = claim_inbound_event(
            session,
            source=SHOP_SOURCE,
            external_id=event.event_id,
            event_type=event.type,
            subject_key=_subject(event),
        )
        if claimed is None:
            return IngestResult(event.event_id, "duplicate", outcome="already applied")
        outcome = _apply(session, event, ctx)
    log.info("event %s (%s) accepted: %s", event.event_id, event.type, outcome)
    return IngestResult(event.event_id, "accepted", outcome=outcome)


def ingest_event(
    factory: sessionmaker[Session], raw: Any, config: OperatorConfig, now: datetime | None = None
) -> IngestResult:
    with factory() as session, session.begin():
        return ingest_in_session(session, raw, config, now)


def ingest_batch(
    factory: sessionmaker[Session],
    raws: Iterable[Any],
    config: OperatorConfig,
    now: datetime | None = None,
    on_result: Callable[[IngestResult], None] | None = None,
) -> list[IngestResult]:
    """Apply a batch in one transaction, each event in its own savepoint (one commit, not N)."""
    results: list[IngestResult] = []
    with factory() as session, session.begin():
        for raw in raws:
            result = ingest_in_session(session, raw, config, now)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def store_dead_letter(
    factory: sessionmaker[Session], raw: Any, error: str, source: str = "queue"
) -> int:
    """Keep an event we could not take, whole, for `nps-dispatch deadletters list|replay`."""
    try:
        payload = json.dumps(raw, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        payload = repr(raw)
    subject = None
    if isinstance(raw, dict) and isinstance(raw.get("customer"), dict):
        cid = raw["customer"].get("id")
        subject = str(cid)[:128] if cid is not None else None
    with factory() as session, session.begin():
        letter = DeadLetter(
            source=source,
            event_id=event_id_of(raw),
            subject_key=subject,
            payload=payload,
            error=error,
        )
        session.add(letter)
        session.flush()
        return letter.id
