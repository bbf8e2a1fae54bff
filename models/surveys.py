"""Surveys, their history, the messages sent for them, their answers, and skipped purchases."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    any_,
    bindparam,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, BigId, UtcDateTime, utcnow
from models.bulk import insert_rows, is_any, update_rows
from models.lifecycle import (
    AWAITING_FOLLOWUP_STATES,
    OPEN_STATES,
    PENDING_STATES,
    SkipReason,
    SurveyState,
    require_moves,
    sources_of,
)


def _state_in(states: Iterable[SurveyState]) -> str:
    """``state IN (...)`` in a fixed order, the predicate of a partial index; a query repeats it
    word for word (see :data:`PENDING_WHERE`) so that PostgreSQL can use the index."""
    return "state IN (" + ", ".join(f"'{s.value}'" for s in sorted(states)) + ")"


PENDING_WHERE: Final = _state_in(PENDING_STATES)
QUEUED_WHERE: Final = _state_in([SurveyState.queued])
OPEN_WHERE: Final = _state_in(OPEN_STATES)
CLOSING_WHERE: Final = _state_in(OPEN_STATES | AWAITING_FOLLOWUP_STATES)


def _partial_index(name: str, *columns: str, where: str) -> Index:
    """An index of ``columns`` over the rows matching ``where`` only, on both databases."""
    return Index(name, *columns, postgresql_where=text(where), sqlite_where=text(where))


class Survey(Base):
    __tablename__ = "surveys"
    __table_args__ = (
        # The scheduler's index: only pending rows are in it, so its cost follows what is due,
        # not what is stored.
        _partial_index(
            "ix_surveys_due_pending",
            "due_at",
            where="state IN ('waiting_anchor', 'scheduled', 'queued')",
        ),
        Index("ix_surveys_state", "state"),
        # The scheduler's steps, each a range scan of the rows it acts on, whatever the number of
        # pending, open or final surveys: due scheduled (or anchor-waiting) rows by due time;
        # pending rows planned under another config version (two ranges around the current
        # one); queued rows by their lease; open invitations by reminder and by window end.
        _partial_index("ix_surveys_pending_state_due", "state", "due_at", where=PENDING_WHERE),
        _partial_index("ix_surveys_pending_version", "config_version", where=PENDING_WHERE),
        _partial_index("ix_surveys_queued_lease", "queued_at", where=QUEUED_WHERE),
        _partial_index("ix_surveys_open_reminder", "next_reminder_at", where=OPEN_WHERE),
        _partial_index("ix_surveys_closing", "closes_at", where=CLOSING_WHERE),
        # The dashboard's latest answers, and the report cache's data version (max of it).
        Index("ix_surveys_answered_at", "answered_at"),
        Index("ix_surveys_state_changed_at", "state_changed_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), unique=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(20), default=SurveyState.scheduled)
    state_changed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # Planning, as decided under config `config_version`.
    config_version: Mapped[str | None] = mapped_column(String(16))
    anchor_kind: Mapped[str | None] = mapped_column(String(16))
    anchor_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    anchor_deadline: Mapped[datetime | None] = mapped_column(UtcDateTime)
    delay_seconds: Mapped[int | None] = mapped_column(Integer)
    rule_index: Mapped[int | None] = mapped_column(Integer)
    arm: Mapped[str | None] = mapped_column(String(64))
    timezone: Mapped[str | None] = mapped_column(String(64))
    due_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    planned_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # Sending.
    queued_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    sending_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    provider: Mapped[str | None] = mapped_column(String(16))
    provider_message_id: Mapped[str | None] = mapped_column(String(64), index=True)
    tried_channels: Mapped[str | None] = mapped_column(String(32))  # "sms,email" after fallback
    reminders_sent: Mapped[int] = mapped_column(Integer, default=0)
    next_reminder_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Answer.
    score: Mapped[int | None] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    closes_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Why it ended where it did (a provider error code, "consent revoked", ...).
    final_reason: Mapped[str | None] = mapped_column(Text)


class SurveyTransition(Base):
    """Every state change, for audit and for the timing view."""

    __tablename__ = "survey_transitions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    survey_id: Mapped[int] = mapped_column(ForeignKey("surveys.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text)


class MessageRecord(Base):
    """One message we sent (or tried to) for a survey: invitation, reminder, follow-up, thanks."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    survey_id: Mapped[int] = mapped_column(ForeignKey("surveys.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(8))
    provider: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(20))
    segments: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[str | None] = mapped_column(Text)  # kept for the console channel only
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Answer(Base):
    """Every score or comment received, so a changed mind keeps its history."""

    __tablename__ = "answers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    survey_id: Mapped[int] = mapped_column(ForeignKey("surveys.id", ondelete="CASCADE"), index=True)
    score: Mapped[int | None] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    via: Mapped[str] = mapped_column(String(8))  # sms | web
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class SkippedPurchase(Base):
    """A purchase that got no survey, and why."""

    __tablename__ = "skipped_purchases"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), unique=True)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


# Ids per statement, under the bound-parameter limits of both backends.
_CHUNK: Final = 1000

#: Core's columns, for ``models.bulk``: the ids of a move travel as one array parameter, and
#: its transitions are written with one bulk insert, not the ORM's.
_SURVEY_IDS: Final = cast(Table, Survey.__table__).c.id
_TRANSITIONS: Final = cast(Table, SurveyTransition.__table__)


def move(
    session: Session,
    survey_ids: int | Iterable[int],
    target: SurveyState,
    *,
    reason: str | None = None,
    only_from: Iterable[SurveyState] | None = None,
    now: datetime | None = None,
    **values: Any,
) -> list[int]:
    """Move surveys to ``target`` if, and only if, their current state allows it.

    This is the only writer of ``Survey.state``. It is a conditional UPDATE (``WHERE state IN
    allowed``) so that two workers racing for one survey cannot both win: the loser's update
    matches no row. Returns the ids that moved (and records their transitions).
    """
    ids = [survey_ids] if isinstance(survey_ids, int) else list(survey_ids)
    if not ids:
        return []
    allowed = sources_of(target)
    if only_from is not None:
        allowed = allowed & frozenset(only_from)
    if not allowed:
        return []
    now = now or utcnow()
    moved: list[tuple[int, str]] = []
    # Chunked to stay under SQLite's bound-parameter limit (on PostgreSQL the ids of a chunk
    # travel as one array parameter).
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        observed: dict[str, list[int]] = {}
        for sid, state in session.execute(
            select(Survey.id, Survey.state).where(
                is_any(session, _SURVEY_IDS, chunk), Survey.state.in_([s.value for s in allowed])
            )
        ):
            observed.setdefault(state, []).append(sid)
        for state, group in observed.items():
            # Compare-and-set: a row whose state changed since we read it matches nothing.
            rows = session.execute(
                update(Survey)
                .where(is_any(session, _SURVEY_IDS, group), Survey.state == state)
                .values(state=target.value, state_changed_at=now, **values)
                .returning(Survey.id)
                .execution_options(synchronize_session=False)
            ).all()
            moved.extend((r[0], state) for r in rows)
    if moved:
        insert_rows(
            session,
            _TRANSITIONS,
            [
                {
                    "survey_id": sid,
                    "from_state": source,
                    "to_state": target.value,
                    "at": now,
                    "reason": reason,
                }
                for sid, source in moved
            ],
        )
        _expire_loaded(session, {sid for sid, _ in moved})
    return [sid for sid, _ in moved]


def in_states(*states: SurveyState) -> ColumnElement[bool]:
    """``surveys.state IN (...)`` with the states written into the SQL (in the order of the
    partial indexes' predicates), not bound, so that PostgreSQL can match a partial index
    whatever plan it caches for the statement."""
    values = sorted(s.value for s in states)
    return Survey.state.in_(
        bindparam("states", values, expanding=True, literal_execute=True, unique=True)
    )


@dataclass(frozen=True, slots=True)
class Move:
    """One survey's move in :func:`move_each`: from the state its caller read it in (under a
    row lock, in the same transaction) to ``target``, with the columns to set beside the state."""

    survey_id: int
    source: SurveyState
    target: SurveyState
    reason: str | None = None
    values: tuple[tuple[str, Any], ...] = ()


def move_each(session: Session, moves: Sequence[Move], *, now: datetime) -> list[int]:
    """Move many surveys, each to its own target, with a fixed number of statements however
    many surveys there are: on PostgreSQL one statement per distinct (source, target, reason,
    values) that updates the rows and records their transitions together (the ids travel as one
    array); elsewhere one compare-and-set UPDATE per distinct move and one INSERT of every
    transition.

    The batch form of :func:`move`, for callers that already hold the rows locked and know their
    states (the scheduler's claim): every move is checked against the lifecycle first
    (:func:`models.lifecycle.require_moves`, the same table), and a row no longer in its
    ``source`` state matches nothing and stays where it is. Returns the ids that moved."""
    if not moves:
        return []
    require_moves((m.source, m.target) for m in moves)
    groups: dict[
        tuple[SurveyState, SurveyState, str | None, tuple[tuple[str, Any], ...]], list[int]
    ]
    groups = {}
    for m in moves:
        groups.setdefault((m.source, m.target, m.reason, m.values), []).append(m.survey_id)
    on_postgres = session.get_bind().dialect.name == "postgresql"
    moved: list[int] = []
    transitions: list[dict[str, Any]] = []
    for (source, target, reason, values), ids in groups.items():
        changes = {"state": target.value, "state_changed_at": now, **dict(values)}
        if on_postgres:
            moved.extend(_move_and_record(session, ids, source, target, reason, now, changes))
            continue
        for start in range(0, len(ids), _CHUNK):
            done = session.scalars(
                update(Survey)
                .where(Survey.id.in_(ids[start : start + _CHUNK]), Survey.state == source.value)
                .values(**changes)
                .returning(Survey.id)
                .execution_options(synchronize_session=False)
            ).all()
            moved.extend(done)
            row = {"from_state": source.value, "to_state": target.value, "at": now}
            transitions.extend({"survey_id": sid, "reason": reason, **row} for sid in done)
    if transitions:
        # RETURNING makes SQLAlchemy send multi-row INSERTs ("insertmanyvalues", up to 1000 rows
        # each) rather than one INSERT per row; a NULL reason is written, not left out (which
        # would split the rows into groups).
        session.scalars(
            insert(SurveyTransition)
            .returning(SurveyTransition.id)
            .execution_options(render_nulls=True),
            transitions,
        ).all()
    if moved:
        _expire_loaded(session, set(moved))
    return moved


class MoveConflict(RuntimeError):
    """A survey the caller held locked was not in the state its move started from."""


def move_rows(session: Session, moves: Sequence[Move], *, now: datetime) -> list[int]:
    """Move many surveys, each with columns of its own, with a fixed number of statements
    however many surveys there are: the batch form of :func:`move` for a caller that holds the
    rows locked in this transaction and knows their states (the replay of delivery events).

    One survey may move more than once: its moves are applied in the order given, in rounds
    (the first move of every survey, then the second...), each round one ``UPDATE`` per
    distinct (source, target, columns set), the rows' own values travelling as arrays
    (:func:`models.bulk.update_rows`), and one ``INSERT`` of the round's transitions. Every
    move is checked against the lifecycle first (:func:`models.lifecycle.require_moves`). Each
    ``UPDATE`` is still a compare-and-set on the source state; a row that matches nothing means
    the caller's lock did not hold what it read, and raises :class:`MoveConflict` (the caller's
    savepoint or transaction then undoes the batch). Returns the ids moved, once each."""
    if not moves:
        return []
    require_moves((m.source, m.target) for m in moves)
    rounds: list[list[Move]] = []
    taken: dict[int, int] = {}
    for m in moves:
        turn = taken.get(m.survey_id, 0)
        taken[m.survey_id] = turn + 1
        if turn == len(rounds):
            rounds.append([])
        rounds[turn].append(m)
    surveys = cast(Table, Survey.__table__)
    for turn_moves in rounds:
        groups: dict[tuple[SurveyState, SurveyState, tuple[str, ...]], list[dict[str, Any]]] = {}
        for m in turn_moves:
            values = dict(m.values)
            key = (m.source, m.target, tuple(sorted(values)))
            row = {"id": m.survey_id, "state": m.target.value, "state_changed_at": now, **values}
            groups.setdefault(key, []).append(row)
        for (source, target, names), rows in groups.items():
            fields = ["state", "state_changed_at", *names]
            done = update_rows(session, surveys, fields, rows, surveys.c.state == source.value)
            if done != len(rows):
                raise MoveConflict(
                    f"{len(rows) - done} of {len(rows)} surveys were no longer {source.value}"
                    f" when moved to {target.value}"
                )
        insert_rows(
            session,
            _TRANSITIONS,
            [
                {
                    "survey_id": m.survey_id,
                    "from_state": m.source.value,
                    "to_state": m.target.value,
                    "at": now,
                    "reason": m.reason,
                }
                for m in turn_moves
            ],
        )
    _expire_loaded(session, set(taken))
    return list(taken)


def _move_and_record(
    session: Session,
    ids: list[int],
    source: SurveyState,
    target: SurveyState,
    reason: str | None,
    now: datetime,
    changes: dict[str, Any],
) -> Sequence[int]:
    """PostgreSQL: ``WITH moved AS (UPDATE ... WHERE id = ANY(:ids) AND state = :source
    RETURNING id) INSERT INTO survey_transitions SELECT ... FROM moved``, one round trip."""
    surveys = Base.metadata.tables[Survey.__tablename__]
    transitions = Base.metadata.tables[SurveyTransition.__tablename__]
    moved = (
        update(surveys)
        .where(
            surveys.c.id == any_(bindparam("ids", ids, type_=ARRAY(BigInteger))),
            surveys.c.state == source.value,
        )
        .values(**changes)
        .returning(surveys.c.id)
        .cte("moved")
    )
    record = (
        insert(transitions)
        .from_select(
            ["survey_id", "from_state", "to_state", "at", "reason"],
            select(
                moved.c.id,
                literal(source.value, String),
                literal(target.value, String),
                literal(now, UtcDateTime),
                literal(reason, Text),
            ),
        )
        .returning(transitions.c.survey_id)
    )
    return session.scalars(record).all()


def _expire_loaded(session: Session, ids: set[int]) -> None:
    """Loaded Survey objects for these rows are stale now; expire only those (expiring the
    whole session would reload every customer and order the caller holds)."""
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Survey) and obj.id in ids:
            session.expire(obj)


def record_skip(
    session: Session, order_id: int, reason: SkipReason, detail: str | None = None
) -> None:
    session.add(SkippedPurchase(order_id=order_id, reason=reason.value, detail=detail))
