"""The raw-row plumbing the webhook intake shares (:mod:`dispatch.responses.intake` and
:mod:`dispatch.responses.intake_group`): the outcome of one stored event (:class:`Taken`), the
raw row's columns, the one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` that stores any
number of them, the ``UPDATE`` that brings a failed row back to the replay when its provider
sends it again, and the connection a lone statement runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, cast

from sqlalchemy import Connection, Table, bindparam, case, update

from channels.base import DeliveryEvent, DeliveryEventKind, RawWebhook
from channels.webhook_sources import WEBHOOK_SOURCES as SOURCES
from dispatch.responses.common import CONSENT_KINDS
from dispatch.responses.store import REPLAY_MAX_ATTEMPTS
from models import InboundEvent
from models.bulk import insert_rows

__all__ = [
    "CONSENT",
    "MESSAGE_ONLY",
    "Taken",
    "bring_back",
    "raw_row",
    "read_event",
    "store_rows",
]

K = DeliveryEventKind

#: Kinds whose whole effect, once the message is on record, is the message's own delivery
#: state: none of them moves a survey whose send we committed (``sent`` or later).
MESSAGE_ONLY: Final = frozenset({K.queued, K.sent, K.deferred, K.opened, K.clicked})

#: Kinds that change consent: applied before the answer, never left for later.
CONSENT: Final = CONSENT_KINDS

_CHUNK: Final = 500  # rows per INSERT: under SQLite's bound-parameter limit, a bounded statement


@dataclass(frozen=True, slots=True)
class Taken:
    """The outcome of one stored event: ``applied`` now, ``stored`` and left for later,
    ``duplicate`` (its provider id was stored before), or ``failed`` (kept for the replay)."""

    row_id: int | None
    status: Literal["applied", "stored", "duplicate", "failed"]


EVENTS: Final = cast(Table, InboundEvent.__table__)

#: A provider sending again an event whose stored row failed to apply brings the row back: due
#: for the next replay at once, and, when it was given up, with one more attempt allowed (a
#: failure then gives it up again). A copy of a row not failed yet changes nothing.
_BRING_BACK: Final = (
    update(EVENTS)
    .where(
        EVENTS.c.source == bindparam("b_source"),
        EVENTS.c.external_id.in_(bindparam("b_external_ids", expanding=True)),
        EVENTS.c.handled_at.is_(None),
        EVENTS.c.attempts > 0,
    )
    .values(
        retry_at=bindparam("b_now"),
        attempts=case(
            (EVENTS.c.attempts >= REPLAY_MAX_ATTEMPTS, REPLAY_MAX_ATTEMPTS - 1),
            else_=EVENTS.c.attempts,
        ),
    )
)


def bring_back(conn: Connection, source: str, external_ids: list[str], now: datetime) -> None:
    """Run :data:`_BRING_BACK` for copies of events stored before (none: no statement)."""
    if external_ids:
        conn.execute(
            _BRING_BACK, {"b_source": source, "b_external_ids": external_ids, "b_now": now}
        )


def store_rows(conn: Connection, rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Insert the rows not stored yet: ``{(source, external_id): id}`` of those inserted.

    ``INSERT ... ON CONFLICT (source, external_id) DO NOTHING RETURNING``: on PostgreSQL one
    statement of the same text whatever the number of rows (``models.bulk``), so neither
    SQLAlchemy nor the driver renders and parses a new multi-row statement for each group."""
    stored: dict[tuple[str, str], int] = {}
    for start in range(0, len(rows), _CHUNK):
        result = insert_rows(
            conn,
            EVENTS,
            rows[start : start + _CHUNK],
            ignoring=["source", "external_id"],
            returning=[EVENTS.c.id, EVENTS.c.source, EVENTS.c.external_id],
        )
        assert result is not None
        stored.update({(row.source, row.external_id): row.id for row in result})
    return stored


def raw_row(raw: RawWebhook, now: datetime, **values: Any) -> dict[str, Any]:
    """The ``inbound_events`` columns of ``raw`` received at ``now``, with ``values`` set."""
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


def read_event(raw: RawWebhook, now: datetime) -> DeliveryEvent | None:
    """``raw`` read back by its source as a delivery event, else ``None``."""
    source = SOURCES.get(raw.source)
    if source is None or not isinstance(raw.payload, dict):
        return None
    event = source.read(raw.payload, now)
    return event if isinstance(event, DeliveryEvent) else None
