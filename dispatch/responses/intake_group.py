"""Status callbacks taken in groups: the raw rows of many requests stored, and those that only
advance a message's delivery state applied, in one shared transaction.

:func:`take_delivery_events` takes the events that concurrent requests handed in together
(``web.webhooks`` gathers them while the previous group is committed) and, for the whole group:

1. advances the delivery state of every message an event of the group can only advance
   (``queued``, ``sent``, ``deferred``, an open or a click: :data:`MESSAGE_ONLY`), by one
   conditional ``UPDATE`` (one per message on SQLite, or when the group holds one message),
   each message taking the highest-ranked such event of the group unless its own state already
   ranks as high;
2. stores every event by one ``INSERT ... ON CONFLICT DO NOTHING`` (``models.bulk``): those whose
   message was advanced as applied (tied to its survey), the others left for the replay
   (``retry_at`` = now, due for the scheduler's next pass, whose full rules keep a late or
   repeated event from moving a survey backwards);
3. commits once.

A copy of an event stored before (by an earlier request or another process) is a duplicate with
no second effect: when the ``INSERT`` finds one among the events applied in step 1, the whole
transaction is rolled back and run again without it, so its message is not advanced twice; a
copy of a row whose application failed brings that row back to the replay. Within a group, a
second copy of an event is a duplicate of the first. When the transaction fails, nothing of the
group stays and the exception reaches every request of it (which answers 500, so Twilio's retry
brings the event back); it runs once more first when its pooled connection was gone.

A group of one costs what one request always cost: two statements and a commit for an event
applied at once, one autocommitted ``INSERT`` for an event left for later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, cast

from sqlalchemy import Connection, String, Table, bindparam, case, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from channels.base import DeliveryEventKind, RawWebhook
from channels.webhook_sources import delivery_rules
from dispatch.responses.intake_rows import (
    MESSAGE_ONLY,
    Taken,
    bring_back,
    raw_row,
    read_event,
    store_rows,
)
from models import MessageRecord, utcnow
from models.session import engine_of, retry_on_disconnect, single_statement

__all__ = ["take_delivery_event", "take_delivery_events"]

K = DeliveryEventKind
_MESSAGES: Final = cast(Table, MessageRecord.__table__)

Key = tuple[str, str]  # (source, external_id) of a raw row
Message = tuple[str, str]  # (provider, provider message id)

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

#: :data:`_ADVANCE_MESSAGE` for many messages at once (PostgreSQL): one row of arrays per
#: message, ``kept`` the comma-joined states that rank as high as the new one. The same
#: conditions on the updated row itself, for the same reason.
_ADVANCE_MESSAGES: Final = text(
    """
    UPDATE messages AS m
    SET status = CASE WHEN m.status = ANY(string_to_array(v.kept, ',')) THEN m.status
                      ELSE v.new END
    FROM unnest(CAST(:providers AS varchar[]), CAST(:message_ids AS varchar[]),
                CAST(:news AS varchar[]), CAST(:kepts AS varchar[]))
         AS v(provider, message_id, new, kept)
    WHERE m.id = (SELECT max(x.id) FROM messages AS x
                  WHERE x.provider = v.provider AND x.provider_message_id = v.message_id)
      AND m.provider = v.provider AND m.provider_message_id = v.message_id
    RETURNING v.provider, v.message_id, m.survey_id
    """
)


@dataclass(frozen=True, slots=True)
class _Advance:
    """What one message of the group takes: its new state, and the states kept over it."""

    new: str
    kept: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Cheap:
    """An event of the group that can only advance its message, and what the message takes."""

    message: Message
    kind: DeliveryEventKind
    advance: _Advance


def take_delivery_event(
    factory: sessionmaker[Session], raw: RawWebhook, *, now: datetime | None = None
) -> Taken:
    """Store one delivery event and apply it now when it only advances a message's delivery
    state, else leave it stored for the replay: a group of one (module docstring)."""
    return take_delivery_events(factory, [raw], now=now)[0]


def take_delivery_events(
    factory: sessionmaker[Session], raws: Sequence[RawWebhook], *, now: datetime | None = None
) -> list[Taken]:
    """Store a group of delivery events in one transaction, applying at once those that only
    advance a message's delivery state (module docstring); one outcome per event, in order.
    Raises when the transaction failed: then nothing of the group was stored."""
    at = now or utcnow()
    plan = _plan(raws, at)
    outcome = retry_on_disconnect(lambda: _take(factory, raws, plan, at))
    results: list[Taken] = []
    seen: set[Key] = set()
    for raw in raws:
        key = (raw.source, raw.external_id)
        taken = outcome.get(key) if key not in seen else None
        seen.add(key)
        results.append(taken or Taken(None, "duplicate"))
    return results


def _plan(raws: Sequence[RawWebhook], now: datetime) -> dict[Key, _Cheap]:
    """The events (first copies) that can only advance their message, with what each message
    takes: the highest-ranked of its group's events (the first of equal ones)."""
    cheap: dict[Key, tuple[Message, DeliveryEventKind]] = {}
    for raw in raws:
        key = (raw.source, raw.external_id)
        if key in cheap:
            continue
        event = read_event(raw, now)
        if (
            event is None
            or event.kind not in MESSAGE_ONLY
            or event.provider_message_id is None
            or (rules := delivery_rules(event.provider)) is None
            or not rules.advances(None, event.kind)
        ):
            continue
        cheap[key] = ((event.provider, event.provider_message_id), event.kind)
    best: dict[Message, DeliveryEventKind] = {}
    for message, kind in cheap.values():
        rules = delivery_rules(message[0])
        assert rules is not None
        if message not in best or rules.advances(best[message], kind):
            best[message] = kind
    advances: dict[Message, _Advance] = {}
    for message, kind in best.items():
        rules = delivery_rules(message[0])
        assert rules is not None
        kept = tuple(k.value for k in K if not rules.advances(k, kind))
        advances[message] = _Advance(kind.value, kept)
    return {key: _Cheap(message, kind, advances[message]) for key, (message, kind) in cheap.items()}


def _take(
    factory: sessionmaker[Session],
    raws: Sequence[RawWebhook],
    plan: dict[Key, _Cheap],
    now: datetime,
) -> dict[Key, Taken]:
    """One try of the group's transaction: ``{key: outcome}`` of the first copies stored."""
    engine = engine_of(factory)
    firsts: dict[Key, RawWebhook] = {}
    for raw in raws:
        firsts.setdefault((raw.source, raw.external_id), raw)
    known: set[Key] = set()  # stored before: duplicates, left out of the next try
    while True:
        todo = {key: raw for key, raw in firsts.items() if key not in known}
        messages = {plan[key].message: plan[key].advance for key in todo if key in plan}
        with engine.connect() if messages else single_statement(engine) as conn:
            advanced = _advance(conn, messages) if messages else {}
            rows = []
            applied: set[Key] = set()
            for key, raw in sorted(todo.items()):  # a stable order: no deadlock between groups
                cheap = plan.get(key)
                if cheap is not None and cheap.message in advanced:
                    applied.add(key)
                    result = f"message {cheap.kind.value}"
                    survey_id = advanced[cheap.message]
                    rows.append(
                        raw_row(raw, now, handled_at=now, result=result, survey_id=survey_id)
                    )
                else:
                    rows.append(raw_row(raw, now, retry_at=now))
            stored = store_rows(conn, rows) if rows else {}
            copies = [key for key in todo if key not in stored]
            if any(key in applied for key in copies):
                # A copy of an event stored before was applied too: undo it all and go again.
                conn.rollback()
                known.update(copies)
                continue
            known.update(copies)
            by_source: dict[str, list[str]] = {}
            for source, external_id in sorted(known):
                by_source.setdefault(source, []).append(external_id)
            for source, external_ids in by_source.items():
                bring_back(conn, source, external_ids, now)
            conn.commit()
        return {
            key: Taken(row_id, "applied" if key in applied else "stored")
            for key, row_id in stored.items()
        }


def _advance(conn: Connection, messages: dict[Message, _Advance]) -> dict[Message, int]:
    """Advance each message (sorted: a stable lock order); ``{message: survey id}`` of those
    on record."""
    ordered = sorted(messages.items())
    if conn.dialect.name == "postgresql" and len(ordered) > 1:
        found = conn.execute(
            _ADVANCE_MESSAGES,
            {
                "providers": [provider for (provider, _id), _a in ordered],
                "message_ids": [message_id for (_p, message_id), _a in ordered],
                "news": [advance.new for _m, advance in ordered],
                "kepts": [",".join(advance.kept) for _m, advance in ordered],
            },
        )
        return {(provider, message_id): survey_id for provider, message_id, survey_id in found}
    advanced: dict[Message, int] = {}
    for (provider, message_id), advance in ordered:
        survey_id = conn.execute(
            _ADVANCE_MESSAGE,
            {
                "b_provider": provider,
                "b_message_id": message_id,
                "b_kept": list(advance.kept),
                "b_new": advance.new,
            },
        ).scalar()
        if survey_id is not None:
            advanced[(provider, message_id)] = survey_id
    return advanced
