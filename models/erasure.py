"""Who was erased, and the lock that keeps an erasure and any other event about the same person
from interleaving. Outside the customer row, a shop customer id is stored only as its keyed
pseudonym (:func:`subject_key`): in ledger and dead-letter subject keys and in tombstones."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import cast

from sqlalchemy import Select, Table, func, select, text, tuple_, update
from sqlalchemy.orm import Session

from models.bulk import Match, select_any
from models.customers import ErasedSubject
from models.inbound import InboundEvent
from models.prepared import run_kept
from models.privacy import legacy_tombstone, pseudonymiser

_TOMBSTONES = cast(Table, ErasedSubject.__table__)
_LOCK_SUBJECTS = text(
    "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) AS t(k)"
)


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
    created a fresh row under the shop's id, with the contacts the erasure had just removed.

    Every transaction that creates a customer row or changes its ``external_id`` holds it
    too: ingest's per-event path through :func:`erased_at`, the set-based one through
    :func:`erased_at_many`, and erasure. The set-based path relies on it to insert a customer it
    found missing only when it writes (``ingest.batch_load``)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    key = _lock_key(customer_external_id)
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _lock_key(customer_external_id: str) -> int:
    digest = hashlib.sha256(f"subject\n{subject_key(customer_external_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_subjects(session: Session, customer_external_ids: Iterable[str]) -> None:
    """:func:`lock_subject` for many customers in one statement, taken in ascending key order
    so that two transactions locking overlapping sets cannot wait on each other in a cycle."""
    if session.get_bind().dialect.name != "postgresql":
        return
    keys = sorted({_lock_key(external_id) for external_id in customer_external_ids})
    if keys:
        run_kept(session, "lock_subjects", lambda: _LOCK_SUBJECTS, {"keys": keys})


def _tombstones(match: Match) -> Select[tuple[str, datetime]]:
    return select(_TOMBSTONES.c.subject_hash, _TOMBSTONES.c.erased_at).where(
        match(_TOMBSTONES.c.subject_hash)
    )


def erased_at_many(
    session: Session, customer_external_ids: Iterable[str]
) -> dict[str, datetime | None]:
    """:func:`erased_at` for many customers: their locks (:func:`lock_subjects`), then one
    query. Each id maps to its erasure time, or ``None``."""
    ids = sorted(set(customer_external_ids))
    lock_subjects(session, ids)
    keys = {
        key: external_id
        for external_id in ids
        for key in (subject_key(external_id), legacy_tombstone(external_id))
    }
    found: dict[str, datetime | None] = dict.fromkeys(ids)
    if not keys:
        return found
    found_rows = cast(
        Iterable[tuple[str, datetime]], select_any(session, "tombstones", _tombstones, list(keys))
    )
    for subject_hash, at in found_rows:
        external_id = keys[subject_hash]
        was = found[external_id]
        found[external_id] = at if was is None else max(was, at)
    return found


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
    forget_subjects(session, [subject])


def forget_subjects(
    session: Session, subjects: Iterable[str], sparing: Iterable[tuple[str, str]] = ()
) -> None:
    """:func:`forget_subject` for many subjects in one statement, except the ledger rows named
    in ``sparing`` (source, event id)."""
    keys = sorted(set(subjects))
    if not keys:
        return
    spared = sorted(set(sparing))
    session.execute(
        update(InboundEvent)
        .where(
            InboundEvent.subject_key.in_(keys),
            *(
                [tuple_(InboundEvent.source, InboundEvent.external_id).not_in(spared)]
                if spared
                else []
            ),
        )
        .values(payload=None, subject_key=None, survey_id=None, fingerprint=None)
        .execution_options(synchronize_session=False)
    )
