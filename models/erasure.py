"""Who was erased, and the lock that keeps an erasure and any other event about the same person
from interleaving. Outside the customer row, a shop customer id is stored only as its keyed
pseudonym (:func:`subject_key`): in ledger and dead-letter subject keys and in tombstones."""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from models.customers import ErasedSubject
from models.inbound import InboundEvent
from models.privacy import legacy_tombstone, pseudonymiser


def subject_key(customer_external_id: str) -> str:
    """What is stored for a shop customer id outside the customer row: the keyed pseudonym of
    the process's pseudonymiser (ledger and dead-letter subject keys, tombstones)."""
    return pseudonymiser().subject(customer_external_id)


def lock_subject(session: Session, customer_external_id: str) -> None:
    """Serialise this transaction with any other about the same shop customer (PostgreSQL
    advisory lock, held to the end of the transaction; SQLite has a single writer anyway).

    An erasure takes it before writing its tombstone, and every reader of the tombstone takes
    it before reading. Without it, an event read "no tombstone" while an erasure was running,
    then waited on the customer row, and once the erasure had renamed that row to ``erased:``
    created a fresh row under the shop's id, with the contacts the erasure had just removed."""
    if session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"subject\n{subject_key(customer_external_id)}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def erased_at(session: Session, customer_external_id: str) -> datetime | None:
    """When the customer was erased, or ``None``. A tombstone not yet re-keyed still counts.
    Waits for an erasure of the same customer that is under way (:func:`lock_subject`)."""
    lock_subject(session, customer_external_id)
    keys = [subject_key(customer_external_id), legacy_tombstone(customer_external_id)]
    return session.scalar(
        select(func.max(ErasedSubject.erased_at)).where(ErasedSubject.subject_hash.in_(keys))
    )


def forget_subject(session: Session, subject: str) -> None:
    """Unlink the ledger rows about a subject (by its keyed pseudonym): no payload, subject key,
    survey or content digest stays; the event's id, type and result do, so a late copy of it is
    still recognised. For erasure, and for a late event refused because of a tombstone."""
    session.execute(
        update(InboundEvent)
        .where(InboundEvent.subject_key == subject)
        .values(payload=None, subject_key=None, survey_id=None, fingerprint=None)
        .execution_options(synchronize_session=False)
    )
