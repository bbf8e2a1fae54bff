"""Surveys, their history, the messages sent for them, their answers, and skipped purchases."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, BigId, UtcDateTime, utcnow
from models.lifecycle import SkipReason, SurveyState, sources_of


class Survey(Base):
    __tablename__ = "surveys"
    __table_args__ = (
        # The scheduler's index: only pending rows are in it, so its cost follows what is due,
        # not what is stored.
        Index(
            "ix_surveys_due_pending",
            "due_at",
            postgresql_where=text("state IN ('waiting_anchor', 'scheduled', 'queued')"),
            sqlite_where=text("state IN ('waiting_anchor', 'scheduled', 'queued')"),
        ),
        Index("ix_surveys_state", "state"),
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
    # Chunked to stay under the bound-parameter limits of both backends.
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        observed: dict[str, list[int]] = {}
        for sid, state in session.execute(
            select(Survey.id, Survey.state).where(
                Survey.id.in_(chunk), Survey.state.in_([s.value for s in allowed])
            )
        ):
            observed.setdefault(state, []).append(sid)
        for state, group in observed.items():
            # Compare-and-set: a row whose state changed since we read it matches nothing.
            rows = session.execute(
                update(Survey)
                .where(Survey.id.in_(group), Survey.state == state)
                .values(state=target.value, state_changed_at=now, **values)
                .returning(Survey.id)
                .execution_options(synchronize_session=False)
            ).all()
            moved.extend((r[0], state) for r in rows)
    if moved:
        session.execute(
            insert(SurveyTransition),
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
        # Loaded Survey objects for these rows are stale now; expire only those (expiring the
        # whole session would reload every customer and order the caller holds).
        moved_ids = {sid for sid, _ in moved}
        for obj in list(session.identity_map.values()):
            if isinstance(obj, Survey) and obj.id in moved_ids:
                session.expire(obj)
    return [sid for sid, _ in moved]


def record_skip(
    session: Session, order_id: int, reason: SkipReason, detail: str | None = None
) -> None:
    session.add(SkippedPurchase(order_id=order_id, reason=reason.value, detail=detail))
