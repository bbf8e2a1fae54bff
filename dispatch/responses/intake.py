"""What the webhook routes call once a signature holds: store the raw event, answer at once, and
apply it in the same transaction only when that is cheap or must not wait.

- :func:`take_delivery_event` (a status callback; :mod:`dispatch.responses.intake_group`, which
  also takes the callbacks of concurrent requests in one transaction): an event that can only
  advance the delivery state of a message we recorded (``queued``, ``sent``, ``deferred``, an
  open or a click) is applied by one conditional ``UPDATE`` of that message (its rank must rise)
  and stored as applied, in one transaction of two statements. Any other (a delivery receipt or
  a failure that moves the survey, an event for a message we have no record of) is stored in one
  statement and left for later: :func:`~dispatch.responses.store.replay_unhandled_webhooks`
  applies it on the scheduler's next pass, through the full rules, which keep a late or repeated
  event from moving a survey backwards.
- :func:`take_delivery_batch` (a SendGrid batch): every event stored by one ``INSERT``;
  those that change consent (unsubscribes, spam reports, resubscribes) are applied before the
  answer, each in its own transaction, so an opt-out is recorded before any later send is
  claimed; the rest are left for later as above.
- :func:`take_inbound_sms`: stored and applied in one transaction (its answer depends on the
  effect, and a STOP must hold before the next send): the row is claimed first, so a concurrent
  copy waits and then finds a duplicate. When applying fails, the transaction is rolled back and
  the row is stored again on its own with the failure, for the replay.

A duplicate (same source and provider id) has no second effect anywhere; a copy of an event
whose stored row failed to apply (given up, even) makes that row due for the next replay again.
Rows left for later
carry ``retry_at`` = their arrival, which makes them due for the next replay at once; a row whose
``retry_at`` is null and that is still unhandled was left by a request that died (the replay
takes it after a minute).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session, sessionmaker

from channels.base import RawWebhook
from config import OperatorConfig
from dispatch.responses.common import Handled
from dispatch.responses.intake_group import take_delivery_event
from dispatch.responses.intake_rows import (
    CONSENT,
    MESSAGE_ONLY,
    Taken,
    bring_back,
    raw_row,
    read_event,
    store_rows,
)
from dispatch.responses.store import (
    RowApplier,
    _log_failed_attempt,
    _ties,
    handle_webhook,
    replay_pause,
)
from dispatch.scheduler import describe_error
from models import InboundEvent, utcnow
from models.session import engine_of, retry_on_disconnect

__all__ = [
    "CONSENT",
    "MESSAGE_ONLY",
    "Taken",
    "take_delivery_batch",
    "take_delivery_event",
    "take_inbound_sms",
]

log = logging.getLogger(__name__)


def _store(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert the rows (of one source) not stored yet: ``{external_id: id}`` of those inserted."""
    return {external_id: row_id for (_s, external_id), row_id in store_rows(conn, rows).items()}


def take_delivery_batch(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    raws: Sequence[RawWebhook],
    apply: RowApplier,
    *,
    now: datetime | None = None,
) -> list[Taken]:
    """Store a batch of delivery events (one ``INSERT`` per 500), then apply the consent events
    among the new ones, and those stored before whose application is still pending, each in its
    own transaction; the rest are left for the replay (copies of rows that failed to apply
    brought back to it). One outcome per event, in order."""
    now = now or utcnow()
    urgent: set[str] = set()
    rows: dict[str, dict[str, Any]] = {}
    for raw in raws:
        if raw.external_id in rows:
            continue
        event = read_event(raw, now)
        now_please = event is not None and event.kind in CONSENT
        if now_please:
            urgent.add(raw.external_id)
        rows[raw.external_id] = raw_row(raw, now, retry_at=None if now_please else now)

    def store() -> tuple[dict[str, int], dict[str, int]]:
        """The rows inserted, and the consent events stored before and still unapplied."""
        pending: dict[str, int] = {}
        with engine_of(factory).begin() as conn:
            new = _store(conn, list(rows.values()))
            source = raws[0].source if raws else ""
            bring_back(conn, source, [k for k in rows if k not in new and k not in urgent], now)
            old = [key for key in urgent if key not in new]
            if old:
                found = conn.execute(
                    select(InboundEvent.external_id, InboundEvent.id).where(
                        InboundEvent.source == source,
                        InboundEvent.external_id.in_(old),
                        InboundEvent.handled_at.is_(None),
                    )
                )
                pending = {external_id: row_id for external_id, row_id in found}
        return new, pending

    new, pending = retry_on_disconnect(store)
    outcome: dict[str, Taken] = {}
    for key in rows:
        if key in urgent and (key in new or key in pending):
            row_id = new.get(key) or pending[key]
            handled = handle_webhook(factory, config, row_id, apply, now=now)
            status: Literal["applied", "failed", "duplicate"] = (
                "applied" if key in new else ("duplicate")
            )
            outcome[key] = Taken(row_id, "failed" if handled.status == "failed" else status)
        elif key in new:
            outcome[key] = Taken(new[key], "stored")
    results: list[Taken] = []
    seen: set[str] = set()
    for raw in raws:
        first = raw.external_id not in seen
        seen.add(raw.external_id)
        taken = outcome.get(raw.external_id) if first else None
        results.append(taken or Taken(None, "duplicate"))
    return results


def take_inbound_sms(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    raw: RawWebhook,
    apply: RowApplier,
    *,
    now: datetime | None = None,
) -> Handled:
    """Store an inbound SMS and apply it in the same transaction (module docstring). A copy of
    one stored before is a duplicate, with no reply; if that earlier one is still unapplied (its
    application failed), it is applied now."""
    now = now or utcnow()
    row = InboundEvent(
        source=raw.source,
        external_id=raw.external_id,
        event_type=raw.event_type[:40],
        payload=raw.payload,
        received_at=now,
        attempts=0,
    )

    def attempt() -> Handled | int | None:
        """The outcome once applied, else the id of an earlier copy still unapplied (or None)."""
        with factory() as session, session.begin():
            stored = _store(session.connection(), [raw_row(raw, now)])
            if not stored:
                return session.scalar(
                    select(InboundEvent.id).where(
                        InboundEvent.source == raw.source,
                        InboundEvent.external_id == raw.external_id,
                        InboundEvent.handled_at.is_(None),
                    )
                )
            applied = apply(session, row, config, now, True)
            row_id = stored[raw.external_id]
            session.execute(
                update(InboundEvent)
                .where(InboundEvent.id == row_id)
                .values(handled_at=now, result=applied.result[:40], **_ties(applied))
                .execution_options(synchronize_session=False)
            )
            return Handled(row_id, "applied", applied.result, applied.reply)

    try:
        # Run again once on a new connection when the pooled one was gone: the first attempt
        # was rolled back with it, and its insert makes a second application impossible.
        outcome = retry_on_disconnect(attempt)
    except Exception as exc:  # rolled back: nothing of the effect stays; keep the raw row
        return _keep_failed(factory, raw, now, describe_error(exc, limit=2000))
    if isinstance(outcome, Handled):
        return outcome
    if outcome is None:
        return Handled(0, "duplicate")
    return handle_webhook(factory, config, outcome, apply, now=now)


def _keep_failed(
    factory: sessionmaker[Session], raw: RawWebhook, now: datetime, failure: str
) -> Handled:
    """Store a row whose application failed, with its first failure, for the replay. When even
    that fails (the database is gone), nothing is stored and the caller answers 500."""
    try:
        with engine_of(factory).begin() as conn:
            stored = _store(
                conn, [raw_row(raw, now, attempts=1, error=failure, retry_at=now + replay_pause(1))]
            )
    except Exception as exc:
        log.warning("webhook %s not stored: %s", raw.source, describe_error(exc))
        return Handled(0, "failed")
    row_id = stored.get(raw.external_id, 0)
    _log_failed_attempt(row_id, 1, failure)
    return Handled(row_id, "failed")
