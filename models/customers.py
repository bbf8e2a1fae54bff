"""Customers, their contacts, and consent as an append-only history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, case, select
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from models.base import Base, BigId, UtcDateTime, utcnow


class ContactStatus:
    valid = "valid"
    invalid = "invalid"
    missing = "missing"


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    # Contacts are stored normalised (E.164, lower-cased domain); an invalid one is kept with
    # status "invalid" so the skip reason can be shown, and is never sent to.
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    email_status: Mapped[str] = mapped_column(String(8), default=ContactStatus.missing)
    phone: Mapped[str | None] = mapped_column(String(32), index=True)
    phone_status: Mapped[str] = mapped_column(String(8), default=ContactStatus.missing)
    # The zone the number gives, derived when the number is stored ("" when it gives none; NULL
    # when not derived, and the number is then parsed when a survey is planned). A trigger
    # (migration 0009) sets it to NULL when an UPDATE changes the number but not the zone.
    phone_timezone: Mapped[str | None] = mapped_column(String(64))
    first_name: Mapped[str | None] = mapped_column(String(120))
    locale: Mapped[str | None] = mapped_column(String(35))
    timezone: Mapped[str | None] = mapped_column(String(64))
    country: Mapped[str | None] = mapped_column(String(2))
    previous_orders: Mapped[int | None] = mapped_column(Integer)
    erased_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    def contact_for(self, channel: str) -> tuple[str | None, str]:
        if channel == "email":
            return self.email, self.email_status
        return self.phone, self.phone_status


class ConsentRecord(Base):
    """One grant or revocation, with its evidence. Rows are never updated or deleted (except the
    evidence text on erasure); the current consent is the latest record by capture time."""

    __tablename__ = "consent_records"
    __table_args__ = (Index("ix_consent_current", "customer_id", "channel", "captured_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(8))
    granted: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str | None] = mapped_column(String(120))
    text_version: Mapped[str | None] = mapped_column(String(64))
    captured_at: Mapped[datetime] = mapped_column(UtcDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # What proves it: a shop event id, a provider message id (STOP reply), a webhook event id.
    evidence_kind: Mapped[str] = mapped_column(String(16))
    evidence_ref: Mapped[str | None] = mapped_column(Text)


class ErasedSubject(Base):
    """Tombstone of an erased customer, so that a late event about them is recognised and does
    not bring personal data back.

    ``subject_hash`` is the keyed pseudonym of the shop's id (``models.privacy``): without
    ``NPS_SECRET_KEY`` it cannot be reversed by hashing candidate ids. Tombstones written before
    pseudonyms were keyed hold ``sha256:`` and the bare SHA-256 of the id until they are re-keyed
    (``ingest.erasure.rekey_legacy``)."""

    __tablename__ = "erased_subjects"

    subject_hash: Mapped[str] = mapped_column(String(80), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UtcDateTime)


def consent_order() -> tuple[ColumnElement[Any], ...]:
    """The ORDER BY that puts the current consent record first, for any query over
    ``consent_records`` (:func:`latest_consent`, and statements that check consent for their
    own rows, such as the send's claim): latest by when the record took effect, then a
    revocation before a grant of the same moment, then the latest recorded.

    A record took effect at its capture time, but never later than when we recorded it: a
    shop's clock running ahead (events may be dated up to a day in the future) must not let
    its grant outrank a STOP or an unsubscribe that we stamp with our own clock after it.
    :func:`consent_rank` is the same order in Python."""
    effective_at = case(
        (ConsentRecord.captured_at > ConsentRecord.recorded_at, ConsentRecord.recorded_at),
        else_=ConsentRecord.captured_at,
    )
    return (effective_at.desc(), ConsentRecord.granted.asc(), ConsentRecord.id.desc())


def consent_rank(
    captured_at: datetime, recorded_at: datetime, granted: bool, record_id: int
) -> tuple[datetime, bool, int]:
    """The order of :func:`latest_consent` for records already in memory: the greatest rank is
    the current record. Effective time (capture time, capped by when it was recorded), then a
    revocation before a grant at the same moment, then the latest recorded (highest id)."""
    return (min(captured_at, recorded_at), not granted, record_id)


def latest_consent(session: Session, customer_id: int, channel: str) -> bool | None:
    """The latest record's grant for this customer and channel, ``None`` when there is none.

    Latest by effective time; at the same moment a revocation outranks a grant (when in doubt,
    do not send). :func:`consent_rank` is the same order in Python."""
    granted: bool | None = session.scalar(
        select(ConsentRecord.granted)
        .where(ConsentRecord.customer_id == customer_id, ConsentRecord.channel == channel)
        .order_by(*consent_order())
        .limit(1)
    )
    return granted


def current_consent(session: Session, customer_id: int, channel: str) -> bool:
    """True when the latest record for this customer and channel is a grant."""
    return bool(latest_consent(session, customer_id, channel))


def record_consent(
    session: Session,
    customer: Customer,
    channels: dict[str, bool],
    *,
    source: str | None,
    text_version: str | None,
    captured_at: datetime,
    evidence_kind: str,
    evidence_ref: str | None,
    recorded_at: datetime | None = None,
) -> None:
    """Append one record per channel. ``recorded_at`` is when we learnt it (the caller's clock);
    it caps the record's effective time, see :func:`models.customers.latest_consent`."""
    for channel, granted in channels.items():
        session.add(
            ConsentRecord(
                customer_id=customer.id,
                channel=channel,
                granted=granted,
                source=source,
                text_version=text_version,
                captured_at=captured_at,
                recorded_at=recorded_at or utcnow(),
                evidence_kind=evidence_kind,
                evidence_ref=evidence_ref,
            )
        )
    session.flush()
