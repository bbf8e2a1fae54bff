"""What the webhook routes call once a signature holds: store the raw event, answer at once, and
apply it in the same transaction only when that is cheap or must not wait.

- :func:`take_delivery_event` (a status callback): an event that can only advance the delivery
  state of a message we recorded (``queued``, ``sent``, ``deferred``, an open or a click) is
  applied by one conditional ``UPDATE`` of that message (its rank must rise) and stored as
  applied, in one transaction of two statements. Any other (a delivery receipt or a failure that
  moves the survey, an event for a message we have no record of) is stored in one statement and
  left for later: :func:`~dispatch.responses.store.replay_unhandled_webhooks` applies it on the
  scheduler's next pass, through the full rules, which keep a late or repeated event from moving
  a survey backwards.
- :func:`take_delivery_batch` (a SendGrid batch): every event stored by one multi-row ``INSERT``;
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
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, cast

from sqlalchemy import (
    Connection,
    Engine,
    String,
    Table,
    bindparam,
    case,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from channels.base import DeliveryEvent, DeliveryEventKind, RawWebhook
from channels.webhook_sources import WEBHOOK_SOURCES as SOURCES
from channels.webhook_sources import delivery_rules
from config import OperatorConfig
from dispatch.responses.common import Handled
from dispatch.responses.store import (
    REPLAY_MAX_ATTEMPTS,
    RowApplier,
    _log_failed_attempt,
    _ties,
    handle_webhook,
    replay_pause,
)
from dispatch.scheduler import describe_error
from models import InboundEvent, MessageRecord, utcnow
from models.session import retry_on_disconnect

__all__ = ["Taken", "take_delivery_batch", "take_delivery_event", "take_inbound_sms"]

log = logging.getLogger(__name__)
K = DeliveryEventKind

#: Kinds whose whole effect, once the message is on record, is the message's own delivery
#: state: none of them moves a survey whose send we committed (``sent`` or later).
MESSAGE_ONLY: Final = frozenset({K.queued, K.sent, K.deferred, K.opened, K.clicked})

#: Kinds that change consent: applied before the answer, never left for later.
CONSENT: Final = frozenset({K.opted_out, K.spam_report, K.opted_in})

_CHUNK: Final = 500  # rows per INSERT, well under both backends' bound-parameter limits


@dataclass(frozen=True, slots=True)
class Taken:
    """The outcome of one stored event: ``applied`` now, ``stored`` and left for later,
    ``duplicate`` (its provider id was stored before), or ``failed`` (kept for the replay)."""

    row_id: int | None
    status: Literal["applied", "stored", "duplicate", "failed"]


_EVENTS: Final = cast(Table, InboundEvent.__table__)
_MESSAGES: Final = cast(Table, MessageRecord.__table__)

#: ``INSERT ... ON CONFLICT (source, external_id) DO NOTHING RETURNING id, external_id`` per
#: backend, built once: executed with one row or many (SQLAlchemy's "insertmanyvalues" turns
#: many into multi-row statements), its compiled form is reused by every request.
_STORE: Final = {
    name: insert_fn(_EVENTS)
    .on_conflict_do_nothing(index_elements=["source", "external_id"])
    .returning(_EVENTS.c.id, _EVENTS.c.external_id)
    for name, insert_fn in (("postgresql", postgresql_insert), ("sqlite", sqlite_insert))
}

#: The latest message record with a provider id takes the event's delivery state unless its own
#: already ranks as high (``kept``); returns the message's survey id, no row without a message.
#: The provider id is compared on the updated row itself too, not only in the subquery that
#: found it: PostgreSQL evaluates that subquery once, and re-checks only the row's own
#: conditions when the row was changed meanwhile. An erasure holding the row (it empties the
#: message's provider id) thus leaves nothing to update once it commits, and the event goes to
#: the full rules, which know the customer is erased, instead of tying its raw payload to them.
_ADVANCE_MESSAGE: Final = (
    update(_MESSAGES)
    .where(
        _MESSAGES.c.id
        == select(func.max(_MESSAGES.c.id))
        .where(
            _MESSAGES.c.provider == bindparam("b_provider"),
            _MESSAGES.c.provider_message_id == bindparam("b_message_id"),
        )
        .scalar_subquery(),
        _MESSAGES.c.provider == bindparam("b_provider"),
        _MESSAGES.c.provider_message_id == bindparam("b_message_id"),
    )
    .values(
        status=case(
            (_MESSAGES.c.status.in_(bindparam("b_kept", expanding=True)), _MESSAGES.c.status),
            else_=bindparam("b_new", type_=String),
        )
    )
    .returning(_MESSAGES.c.survey_id)
)


#: A provider sending again an event whose stored row failed to apply brings the row back: due
#: for the next replay at once, and, when it was given up, with one more attempt allowed (a
#: failure then gives it up again). A copy of a row not failed yet changes nothing.
_BRING_BACK: Final = (
    update(_EVENTS)
    .where(
        _EVENTS.c.source == bindparam("b_source"),
        _EVENTS.c.external_id.in_(bindparam("b_external_ids", expanding=True)),
        _EVENTS.c.handled_at.is_(None),
        _EVENTS.c.attempts > 0,
    )
    .values(
        retry_at=bindparam("b_now"),
        attempts=case(
            (_EVENTS.c.attempts >= REPLAY_MAX_ATTEMPTS, REPLAY_MAX_ATTEMPTS - 1),
            else_=_EVENTS.c.attempts,
        ),
    )
)


def _bring_back(conn: Connection, source: str, external_ids: list[str], now: datetime) -> None:
    """Run :data:`_BRING_BACK` for copies of events stored before (none: no statement)."""
    if external_ids:
        conn.execute(
            _BRING_BACK, {"b_source": source, "b_external_ids": external_ids, "b_now": now}
        )


def _store(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert the rows not stored yet: ``{external_id: id}`` of those inserted."""
    stmt = _STORE[conn.dialect.name]
    stored: dict[str, int] = {}
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        result = conn.execute(stmt, chunk[0] if len(chunk) == 1 else chunk)
        stored.update({external_id: row_id for row_id, external_id in result})
    return stored


def _engine(factory: sessionmaker[Session]) -> Engine:
    bind = factory.kw.get("bind")
    if isinstance(bind, Engine):
        return bind
    with factory() as session:
        engine = session.get_bind()
    assert isinstance(engine, Engine)
    return engine


def _row(raw: RawWebhook, now: datetime, **values: Any) -> dict[str, Any]:
    row = {
        "source": raw.source,
        "external_id": raw.external_id,
        "event_type": raw.event_type[:40],
        "payload": raw.payload,
        "received_at": now,
        "attempts": 0,
        "handled_at": None,
        "result": None,
        "survey_id": None,
        "retry_at": None,
        "error": None,
    }
    row.update(values)
    return row


def _read(raw: RawWebhook, now: datetime) -> DeliveryEvent | None:
    source = SOURCES.get(raw.source)
    if source is None or not isinstance(raw.payload, dict):
        return None
    event = source.read(raw.payload, now)
    return event if isinstance(event, DeliveryEvent) else None


def take_delivery_event(
    factory: sessionmaker[Session], raw: RawWebhook, *, now: datetime | None = None
) -> Taken:
    """Store one delivery event (a status callback) and apply it now when it only advances a
    message's delivery state; else leave it stored for the replay (module docstring). Run once
    more on a new connection when the pooled one was gone (both steps may safely run twice)."""
    at = now or utcnow()
    return retry_on_disconnect(lambda: _take_delivery_event(factory, raw, at))


def _take_delivery_event(factory: sessionmaker[Session], raw: RawWebhook, now: datetime) -> Taken:
    event = _read(raw, now)
    rules = delivery_rules(event.provider) if event is not None else None
    engine = _engine(factory)
    if (
        event is not None
        and rules is not None
        and event.kind in MESSAGE_ONLY
        and rules.advances(None, event.kind)
        and event.provider_message_id is not None
    ):
        with engine.connect() as conn:
            survey_id = conn.execute(
                _ADVANCE_MESSAGE,
                {
                    "b_provider": event.provider,
                    "b_message_id": event.provider_message_id,
                    "b_kept": [k.value for k in K if not rules.advances(k, event.kind)],
                    "b_new": event.kind.value,
                },
            ).scalar()
            if survey_id is not None:
                result = f"message {event.kind.value}"
                applied = _row(raw, now, handled_at=now, result=result, survey_id=survey_id)
                stored = _store(conn, [applied])
                if stored:
                    conn.commit()
                    return Taken(stored[raw.external_id], "applied")
                # A copy was stored first: it had the effect, or its row awaits the replay.
                conn.rollback()
                _bring_back(conn, raw.source, [raw.external_id], now)
                conn.commit()
                return Taken(None, "duplicate")
            conn.rollback()  # no message of ours has that id (yet): nothing changed
    with _single_statement(engine) as conn:
        stored = _store(conn, [_row(raw, now, retry_at=now)])
        if not stored:
            _bring_back(conn, raw.source, [raw.external_id], now)
        conn.commit()
    if not stored:
        return Taken(None, "duplicate")
    return Taken(stored[raw.external_id], "stored")


def _single_statement(engine: Engine) -> Connection:
    """A connection for one statement that is its own transaction: on PostgreSQL without
    ``BEGIN`` and ``COMMIT`` round trips (autocommit; the statement is atomic and durable when
    it returns). SQLite keeps its explicit transactions (``models.session``)."""
    if engine.dialect.name == "postgresql":
        return engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    return engine.connect()


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
        event = _read(raw, now)
        now_please = event is not None and event.kind in CONSENT
        if now_please:
            urgent.add(raw.external_id)
        rows[raw.external_id] = _row(raw, now, retry_at=None if now_please else now)

    def store() -> tuple[dict[str, int], dict[str, int]]:
        """The rows inserted, and the consent events stored before and still unapplied."""
        pending: dict[str, int] = {}
        with _engine(factory).begin() as conn:
            new = _store(conn, list(rows.values()))
            source = raws[0].source if raws else ""
            _bring_back(conn, source, [k for k in rows if k not in new and k not in urgent], now)
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
            stored = _store(session.connection(), [_row(raw, now)])
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
        with _engine(factory).begin() as conn:
            stored = _store(
                conn, [_row(raw, now, attempts=1, error=failure, retry_at=now + replay_pause(1))]
            )
    except Exception as exc:
        log.warning("webhook %s not stored: %s", raw.source, describe_error(exc))
        return Handled(0, "failed")
    row_id = stored.get(raw.external_id, 0)
    _log_failed_attempt(row_id, 1, failure)
    return Handled(row_id, "failed")
