"""The outbox of detractor alerts: one row per survey and target, written in the transaction that
records the detractor score, delivered later by the worker.

A row holds no personal data: the survey it is about, the target kind (``webhook`` or
``email``), its delivery state and attempts. What an alert says (score, comment, order number,
channel) is read from the survey when it is delivered, so an erasure before then (which empties
the survey's comment) leaves nothing personal to send. The unique key (survey, target) makes a
second alert about the same answer impossible, whatever re-records or changes the score.

States: ``pending`` (waiting until ``due_at``), ``queued`` (handed to the queue at
``queued_at``), ``delivering`` (claimed by a worker at ``claimed_at``; attempt ``attempts``),
then ``delivered``, ``failed`` or ``cancelled`` (final).
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, UtcDateTime, utcnow

__all__ = ["AlertState", "DetractorAlert"]


class AlertState(enum.StrEnum):
    """An alert's delivery state (see the module docstring)."""

    pending = "pending"
    queued = "queued"
    delivering = "delivering"
    delivered = "delivered"
    failed = "failed"
    cancelled = "cancelled"


class DetractorAlert(Base):
    """One alert about one survey's detractor answer, to one target."""

    __tablename__ = "detractor_alerts"
    __table_args__ = (
        UniqueConstraint("survey_id", "target", name="uq_detractor_alerts_survey_id_target"),
        # The sweeper's index: only rows still to deliver are in it.
        Index(
            "ix_detractor_alerts_open",
            "due_at",
            postgresql_where=text("state IN ('pending', 'queued', 'delivering')"),
            sqlite_where=text("state IN ('pending', 'queued', 'delivering')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    survey_id: Mapped[int] = mapped_column(ForeignKey("surveys.id", ondelete="CASCADE"))
    target: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(12), default=AlertState.pending)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # When it may be delivered: the score's time plus a short wait for the follow-up comment,
    # moved up when the comment arrives; after a failed attempt, the time of the next one.
    due_at: Mapped[datetime] = mapped_column(UtcDateTime)
    queued_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The last attempt's outcome: an HTTP status or an error kind, never a response body.
    last_error: Mapped[str | None] = mapped_column(String(120))
