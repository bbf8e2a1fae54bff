"""Raw inbound events (the idempotency ledger) and dead letters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, BigId, UtcDateTime, insert_ignoring_conflict, utcnow


class InboundEvent(Base):
    """Every event from outside, keyed by (source, external id): a second copy is a duplicate.

    Shop events keep no payload (their effect lives in the domain tables); provider webhooks keep
    the raw payload so that a failure while applying can be replayed (``handled_at`` is null).
    Once applied, a webhook keeps its payload only when it was tied to a survey or a customer
    (``survey_id``, ``subject_key``), where erasure finds it; an unmatched one keeps none.

    ``subject_key`` is the keyed pseudonym of the shop's customer id (``models.privacy``), never
    the id itself. Erasure empties ``payload``, ``subject_key``, ``survey_id`` and
    ``fingerprint`` of the rows about the person: what stays is the event's id, type and result.
    """

    __tablename__ = "inbound_events"
    __table_args__ = (
        UniqueConstraint("source", "external_id", name="uq_inbound_events_source_external_id"),
        Index("ix_inbound_events_unhandled", "source", "handled_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(24))
    external_id: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(40))
    # Keyed pseudonym of the shop's customer id (models.privacy), never the id itself.
    subject_key: Mapped[str | None] = mapped_column(String(128), index=True)
    survey_id: Mapped[int | None] = mapped_column(
        ForeignKey("surveys.id", ondelete="SET NULL"), index=True
    )
    # None is SQL NULL, not a JSON null: "no payload" must read as IS NULL in every query.
    payload: Mapped[dict[str, Any] | list[Any] | None] = mapped_column(JSON(none_as_null=True))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    handled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    result: Mapped[str | None] = mapped_column(String(40))
    error: Mapped[str | None] = mapped_column(Text)
    # A digest of the event's content: the same event_id with other content is a conflict.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    # Replays of a webhook whose application failed: how many, and not before when.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retry_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class DeadLetter(Base):
    """A queue event that failed validation or processing: kept whole, listed and replayable.

    ``subject_key`` is the keyed pseudonym of the event's customer id, so that erasure deletes
    the letters about the person; a letter about an already erased person is kept without the
    personal part of its event."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(24))
    event_id: Mapped[str | None] = mapped_column(String(200))
    subject_key: Mapped[str | None] = mapped_column(String(128), index=True)
    payload: Mapped[str] = mapped_column(Text)  # raw JSON as received, even when it is not valid
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    replay_result: Mapped[str | None] = mapped_column(String(40))


def claim_inbound_event(
    session: Session,
    *,
    source: str,
    external_id: str,
    event_type: str,
    subject_key: str | None = None,
    survey_id: int | None = None,
    payload: dict[str, Any] | list[Any] | None = None,
    fingerprint: str | None = None,
) -> int | None:
    """Record an inbound event once. Returns its row id, or None when it was already recorded.

    ``INSERT ... ON CONFLICT DO NOTHING``: on PostgreSQL a concurrent copy of the same event waits
    for the first transaction and then inserts nothing, so exactly one copy takes effect.
    ``fingerprint`` is the digest of the event's content, kept so that a later event under the
    same id can be told apart from a copy (the caller compares it with the recorded one).
    """
    values = {
        "source": source,
        "external_id": external_id,
        "event_type": event_type,
        "subject_key": subject_key,
        "survey_id": survey_id,
        "payload": payload,
        "fingerprint": fingerprint,
        "received_at": utcnow(),
    }
    stmt = insert_ignoring_conflict(
        session, InboundEvent, ["source", "external_id"], values
    ).returning(InboundEvent.id)
    return session.execute(stmt).scalar_one_or_none()
