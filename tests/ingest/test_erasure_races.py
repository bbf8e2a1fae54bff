"""An erasure and another event about the same customer at the same time (PostgreSQL, two
transactions): whatever the order, nothing personal about the person outlives the erasure.

The erasure is held open in one transaction while the other event runs in a second one; then
the erasure commits. Before the events serialised on the person, the other event read "not
erased", waited on the customer row and, once the erasure had renamed it, created a fresh row
under the shop's id with the contacts the erasure had just removed."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from config import OperatorConfig
from ingest.service import (
    IngestResult,
    ingest_batch,
    ingest_event,
    ingest_in_session,
    store_dead_letter,
)
from models import ConsentRecord, Customer, DeadLetter, InboundEvent, Survey
from models.erasure import subject_key
from tests.conftest import Database
from tests.factories import consent_event, erased, purchase

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
ERASED_AT = "2026-11-24T09:59:00Z"


def _while_erasing(db: Database, config: OperatorConfig, other: Callable[[], Any]) -> Any:
    """Runs ``other`` in a thread while the erasure of c-1 is applied but not committed yet,
    waits until ``other`` is blocked (or done), commits the erasure, returns ``other``'s result."""
    with db.session() as erasing, ThreadPoolExecutor(1) as pool:
        result = ingest_in_session(erasing, erased("c-1", at=ERASED_AT), config, NOW)
        assert result.status == "accepted"
        running: Future[Any] = pool.submit(other)
        _until_blocked_or_done(erasing, running)
        erasing.commit()
        return running.result(timeout=30)


def _until_blocked_or_done(session: Session, running: Future[Any]) -> None:
    for _ in range(200):
        waiting = session.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))
        if waiting or running.done():
            return
        threading.Event().wait(0.05)


def _live_customers(db: Database) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(Customer.external_id).where(Customer.erased_at.is_(None))))


def test_a_purchase_during_the_erasure_does_not_bring_the_customer_back(
    pg_db: Database, config: OperatorConfig
) -> None:
    ingest_event(pg_db.factory, purchase("A-1", "c-1", at="2026-11-18T10:00:00Z"), config, NOW)
    late = purchase("A-2", "c-1", at="2026-11-20T10:00:00Z")

    result: IngestResult = _while_erasing(
        pg_db, config, lambda: ingest_event(pg_db.factory, late, config, NOW)
    )

    assert result.status == "accepted" and result.outcome == "customer erased"
    assert _live_customers(pg_db) == []
    with pg_db.session() as s:
        assert s.scalars(select(Survey.state)).all() == ["withdrawn"]  # the first purchase's


@pytest.mark.parametrize("as_sets", [True, False])
def test_a_recorded_orders_purchase_during_the_erasure_keeps_nothing_of_them(
    pg_db: Database, config: OperatorConfig, as_sets: bool
) -> None:
    """A purchase event sent again for an order recorded before, dated before the erasure, runs
    while the erasure is under way: it waits for it, then unlinks its own ledger row."""
    ingest_event(pg_db.factory, purchase("A-1", "c-1", at="2026-11-18T10:00:00Z"), config, NOW)
    again = purchase("A-1", "c-1", at="2026-11-18T11:00:00Z")

    def send() -> list[IngestResult]:
        if as_sets:
            return ingest_batch(pg_db.factory, [again], config, NOW)
        return [ingest_event(pg_db.factory, again, config, NOW)]

    [answer] = _while_erasing(pg_db, config, send)
    assert answer.outcome == "order already recorded"
    with pg_db.session() as s:
        row = s.scalars(select(InboundEvent).where(InboundEvent.external_id == again["event_id"]))
        assert [(r.subject_key, r.fingerprint) for r in row] == [(None, None)]


def test_a_consent_event_during_the_erasure_does_not_bring_the_customer_back(
    pg_db: Database, config: OperatorConfig
) -> None:
    ingest_event(pg_db.factory, purchase("A-1", "c-1", at="2026-11-18T10:00:00Z"), config, NOW)
    late = consent_event("granted", "c-1", at="2026-11-21T10:00:00Z", email=True)

    _while_erasing(pg_db, config, lambda: ingest_event(pg_db.factory, late, config, NOW))

    assert _live_customers(pg_db) == []
    with pg_db.session() as s:
        sources = s.scalars(select(ConsentRecord.source)).all()
    assert set(sources) == {None}


def test_a_dead_letter_stored_during_the_erasure_keeps_nothing_personal(
    pg_db: Database, config: OperatorConfig
) -> None:
    ingest_event(pg_db.factory, purchase("A-1", "c-1", at="2026-11-18T10:00:00Z"), config, NOW)
    bad = purchase("A-3", "c-1", at="2026-11-20T10:00:00Z")

    _while_erasing(pg_db, config, lambda: store_dead_letter(pg_db.factory, bad, "failed"))

    with pg_db.session() as s:
        [letter] = s.scalars(select(DeadLetter)).all()
    assert letter.subject_key is None
    assert "ana@example.com" not in letter.payload and "c-1" not in letter.payload
    assert json.loads(letter.payload)["event_id"] == bad["event_id"]


def test_a_webhook_applied_while_the_erasure_runs_is_unlinked_by_it(
    pg_db: Database, config: OperatorConfig
) -> None:
    """An SMS from the customer's number is being applied (its row locked) when the erasure
    starts; the applier then ties the row to the customer and commits. The erasure waited for
    it and still leaves no payload nor key on that row."""
    ingest_event(pg_db.factory, purchase("A-1", "c-1", at="2026-11-18T10:00:00Z"), config, NOW)
    payload = {"form": {"From": "+40721000111", "Body": "Who is this?"}}
    with pg_db.session() as s:
        row = InboundEvent(
            source="twilio_inbound",
            external_id="SM" + "9" * 32,
            event_type="sms",
            payload=payload,
            received_at=NOW,
        )
        s.add(row)
        s.commit()
        row_id = row.id

    with pg_db.session() as applying, ThreadPoolExecutor(1) as pool:
        applying.execute(select(InboundEvent).where(InboundEvent.id == row_id).with_for_update())
        erasure = pool.submit(ingest_event, pg_db.factory, erased("c-1", at=ERASED_AT), config, NOW)
        _until_blocked_or_done(applying, erasure)
        applying.execute(
            update(InboundEvent)
            .where(InboundEvent.id == row_id)
            .values(subject_key=subject_key("c-1"), handled_at=NOW, result="no open survey")
        )
        applying.commit()
        assert erasure.result(timeout=30).status == "accepted"

    with pg_db.session() as s:
        stored = s.get(InboundEvent, row_id)
        assert stored is not None
        assert stored.payload is None and stored.subject_key is None


def test_a_batch_during_the_erasure_does_not_bring_the_customer_back(
    pg_db: Database, config: OperatorConfig
) -> None:
    """The batch's purchases are applied as a set: its subjects are locked together, the
    erased one among others, and only that one is refused."""
    ingest_event(pg_db.factory, purchase("A-1", "c-1", at="2026-11-18T10:00:00Z"), config, NOW)
    batch = [
        purchase("A-3", "c-0", at="2026-11-20T10:00:00Z"),
        purchase("A-2", "c-1", at="2026-11-20T10:00:00Z"),
        purchase("A-4", "c-2", at="2026-11-20T10:00:00Z"),
    ]

    results: list[IngestResult] = _while_erasing(
        pg_db, config, lambda: ingest_batch(pg_db.factory, batch, config, NOW)
    )

    assert [r.outcome for r in results] == [
        "planned: email, waiting_anchor",
        "customer erased",
        "planned: email, waiting_anchor",
    ]
    assert sorted(_live_customers(pg_db)) == ["c-0", "c-2"]
