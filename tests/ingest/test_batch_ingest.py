"""Set-based ingest: a fixed number of statements per batch, and the same rows, answers and
outcomes as applying the same events one by one."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from ingest.schema import EVENT_TYPES
from ingest.service import IngestResult, ingest_batch, ingest_in_session
from models import (
    ConsentRecord,
    Customer,
    InboundEvent,
    Order,
    SkippedPurchase,
    Survey,
    SurveyTransition,
)
from tests.conftest import Database, sqlite_database
from tests.factories import consent_event, erased, order_event, purchase


class Statements:
    def __init__(self, db: Database) -> None:
        self.count = 0
        event.listen(db.engine, "before_cursor_execute", self._seen)
        self._engine = db.engine

    def _seen(self, *_: Any) -> None:
        self.count += 1

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


def purchases(n: int, prefix: str, at: datetime) -> list[dict[str, Any]]:
    return [
        purchase(
            f"{prefix}-o-{i}",
            f"{prefix}-c-{i}",
            at=at - timedelta(hours=1),
            email=f"buyer{i}@example.com",
            phone=f"+4072100{i:04d}",
        )
        for i in range(n)
    ]


def test_the_statements_of_a_batch_do_not_grow_with_its_size(db, config, now):
    counted: dict[int, int] = {}
    for n in (10, 100):
        events = purchases(n, f"n{n}", now)
        events += [order_event("delivered", e["order_id"], at=now) for e in events]
        statements = Statements(db)
        try:
            results = ingest_batch(db.factory, events, config, now)
        finally:
            statements.close()
        assert [r.status for r in results] == ["accepted"] * (2 * n)
        assert {r.to_dict()["outcome"]["survey_state"] for r in results[n:]} == {"scheduled"}
        counted[n] = statements.count
    assert counted[10] == counted[100]
    with db.session() as s:
        states = s.scalars(select(Survey.state)).all()
    assert len(states) == 110 and set(states) == {"scheduled"}


def test_the_statements_do_not_grow_for_known_customers_with_history(db, config, now):
    """Customers with consent records and counted surveys, one of them erased: their history,
    tombstones and locks are read per batch too, not per event."""
    counted: dict[int, int] = {}
    for n in (10, 100):
        first = purchases(n, f"h{n}", now - timedelta(days=200))
        ingest_batch(db.factory, first, config, now)
        ingest_batch(db.factory, [erased(f"h{n}-c-0", at=now)], config, now)
        again = [
            purchase(
                f"h{n}-o2-{i}",
                f"h{n}-c-{i}",
                at=now - timedelta(hours=1),
                consent={"sms": i % 2 == 0},
                phone=f"+4072100{i:04d}",
            )
            for i in range(n)
        ]
        again += [order_event("delivered", e["order_id"], at=now) for e in first + again]
        statements = Statements(db)
        try:
            results = ingest_batch(db.factory, again, config, now)
        finally:
            statements.close()
        assert {r.status for r in results} == {"accepted"}
        outcomes = [r.outcome for r in results[:n]]
        assert outcomes[0] == "customer erased"
        assert set(outcomes[1:]) == {"planned: email, waiting_anchor"}
        counted[n] = statements.count
    assert counted[10] == counted[100]


class Sent:
    """The statements an engine sends, as text, and the rows each changed."""

    def __init__(self, db: Database) -> None:
        self.statements: list[str] = []
        self.rowcounts: list[int] = []
        event.listen(db.engine, "after_cursor_execute", self._seen)
        self._engine = db.engine

    def _seen(self, _conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        self.statements.append(" ".join(statement.split()))
        self.rowcounts.append(cursor.rowcount)

    def close(self) -> None:
        event.remove(self._engine, "after_cursor_execute", self._seen)


def test_new_customers_are_stored_once_with_their_values_and_known_ones_updated(db, config, now):
    """A new customer's row is inserted with what its purchases say (never a blank row updated
    afterwards); its consents, survey and order point at it; a known customer is updated."""
    ingest_batch(db.factory, [purchase("K-0", "known", at=now - timedelta(days=300))], config, now)
    at = now - timedelta(hours=1)
    batch = [
        purchase("N-1", "new-1", at=at, email="One@Example.COM", phone="+12125550100"),
        purchase("N-2", "new-2", at=at, phone=None, consent={"email": True}),
        purchase("N-3", "new-1", at=at, email=None, phone="+40721000222", consent={"sms": True}),
        purchase("K-1", "known", at=at, email="known@example.com"),
    ]
    sent = Sent(db)
    try:
        results = ingest_batch(db.factory, batch, config, now)
    finally:
        sent.close()
    assert [r.status for r in results] == ["accepted"] * 4
    updates = [
        count
        for statement, count in zip(sent.statements, sent.rowcounts, strict=True)
        if statement.startswith("UPDATE customers")
    ]
    inserts = [s for s in sent.statements if s.startswith("INSERT INTO customers")]
    assert updates == [1]  # the known customer's row only
    assert len(inserts) == 1
    inserted = inserts[0].split(")")[0]
    assert all(f" {name}," in inserted for name in ("email", "phone", "phone_timezone"))
    with db.session() as s:
        customers = {c.external_id: c for c in s.scalars(select(Customer))}
        assert set(customers) == {"known", "new-1", "new-2"}
        one, two, known = customers["new-1"], customers["new-2"], customers["known"]
        # The later purchase's number, the earlier one's e-mail (the later gave none new).
        assert (one.email, one.email_status) == ("one@example.com", "valid")
        assert (one.phone, one.phone_timezone) == ("+40721000222", "Europe/Bucharest")
        assert (one.first_name, one.country, one.previous_orders) == ("Ana", "RO", 3)
        assert (two.phone, two.phone_status, two.phone_timezone) == (None, "missing", None)
        assert known.email == "known@example.com"
        owner = {o.external_id: o.customer_id for o in s.scalars(select(Order))}
        assert owner == {
            "K-0": known.id,
            "K-1": known.id,
            "N-1": one.id,
            "N-2": two.id,
            "N-3": one.id,
        }
        surveys = {v.order_id: v.customer_id for v in s.scalars(select(Survey))}
        orders = {o.id: o.external_id for o in s.scalars(select(Order))}
        assert {orders[o]: c for o, c in surveys.items()} == {
            k: v for k, v in owner.items() if k in {orders[o] for o in surveys}
        }
        assert {orders[o] for o in surveys} >= {"N-1", "N-2"}
        consents = {
            (c.customer_id, c.channel, c.evidence_ref) for c in s.scalars(select(ConsentRecord))
        }
        assert (one.id, "sms", batch[2]["event_id"]) in consents
        assert (two.id, "email", batch[1]["event_id"]) in consents
        assert all(customer_id > 0 for customer_id, _, _ in consents)


def test_a_customer_stored_meanwhile_by_a_writer_ignoring_the_lock_fails_the_set_not_the_event(
    pg_db: Database, config: OperatorConfig, now: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    """Every writer of a customer row holds its subject's lock, so a customer the run found
    missing cannot appear before the run inserts it. Should one appear all the same, the insert
    fails, the batch is applied one by one, and the event updates that row: nothing lost."""
    db = pg_db

    stored: list[bool] = []

    def store_it_first(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if stored or not (
            statement.startswith("SELECT customers.id") and "FOR UPDATE" in statement
        ):
            return
        stored.append(True)
        with db.engine.begin() as other:
            other.execute(
                insert(Customer).values(
                    external_id="raced",
                    first_name="Old",
                    email_status="missing",
                    phone_status="missing",
                    created_at=now,
                    updated_at=now,
                )
            )

    event.listen(db.engine, "after_cursor_execute", store_it_first)
    try:
        results = ingest_batch(
            db.factory,
            [purchase("R-1", "raced", at=now - timedelta(hours=1), consent={"email": True})],
            config,
            now,
        )
    finally:
        event.remove(db.engine, "after_cursor_execute", store_it_first)
    assert stored
    assert [(r.status, r.outcome) for r in results] == [
        ("accepted", "planned: email, waiting_anchor")
    ]
    (fallback,) = [
        r.getMessage() for r in caplog.records if "not applied as a set" in r.getMessage()
    ]
    assert "IntegrityError" in fallback
    with db.session() as s:
        (customer,) = s.scalars(select(Customer)).all()
        assert (customer.external_id, customer.first_name) == ("raced", "Ana")
        assert s.scalars(select(Survey.customer_id)).all() == [customer.id]
        assert s.scalars(select(ConsentRecord.customer_id)).all() == [customer.id]


@pytest.mark.parametrize("as_sets", [True, False])
def test_a_recorded_orders_purchase_about_an_erased_customer_keeps_nothing_of_them(
    db: Database, config: OperatorConfig, now: datetime, as_sets: bool
) -> None:
    before = now - timedelta(days=2)
    ingest_batch(db.factory, [purchase("E-1", "c-e", at=before - timedelta(days=1))], config, now)
    ingest_batch(db.factory, [erased("c-e", at=before)], config, now)
    again = purchase("E-1", "c-e", at=before - timedelta(hours=1))
    if as_sets:
        results = ingest_batch(db.factory, [again], config, now)
    else:
        results = _one_by_one(db.factory, [again], config, now)
    assert [r.outcome for r in results] == ["order already recorded"]
    with db.session() as s:
        row = s.scalars(select(InboundEvent).where(InboundEvent.external_id == again["event_id"]))
        assert [(r.subject_key, r.fingerprint, r.payload) for r in row] == [(None, None, None)]


def test_a_run_waits_for_a_writer_holding_the_subjects_lock_then_updates_its_row(
    pg_db: Database, config: OperatorConfig, now: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    """A purchase applied on its own creates customer "w" and has not committed; a run about
    "w" and a new "w2" waits on the subject's lock, then finds "w" stored and updates it."""
    db = pg_db
    at = now - timedelta(hours=1)
    holding, release = threading.Event(), threading.Event()

    def create_and_hold() -> None:
        with db.factory() as session, session.begin():
            result = ingest_in_session(session, purchase("W-1", "w", at=at), config, now)
            assert result.status == "accepted"
            holding.set()
            release.wait(30)

    def waiting_for_the_lock() -> int:
        with db.engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                        " AND database = (SELECT oid FROM pg_database"
                        " WHERE datname = current_database())"
                    )
                ).scalar_one()
            )

    batch = [
        purchase("W-2", "w", at=at, phone="+40721000333", consent={"sms": True}),
        purchase("W-3", "w2", at=at),
    ]
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(create_and_hold)
        assert holding.wait(30)
        run = pool.submit(ingest_batch, db.factory, batch, config, now)
        try:
            deadline = time.monotonic() + 30
            while waiting_for_the_lock() == 0 and time.monotonic() < deadline and not run.done():
                time.sleep(0.01)
            assert not run.done()  # it waits for the writer holding the lock
        finally:
            release.set()
        first.result(30)
        results = run.result(30)
    assert [r.status for r in results] == ["accepted", "accepted"]
    assert not [r for r in caplog.records if "not applied as a set" in r.getMessage()]
    with db.session() as s:
        customers = {c.external_id: c for c in s.scalars(select(Customer))}
        assert set(customers) == {"w", "w2"}
        assert customers["w"].phone == "+40721000333"
        owner = {o.external_id: o.customer_id for o in s.scalars(select(Order))}
        w, w2 = customers["w"].id, customers["w2"].id
        assert owner == {"W-1": w, "W-2": w, "W-3": w2}
        consents = {(c.evidence_ref, c.customer_id) for c in s.scalars(select(ConsentRecord))}
        assert {ref for ref, _ in consents} >= {e["event_id"] for e in batch}
        assert consents >= {(batch[0]["event_id"], w), (batch[1]["event_id"], w2)}
        assert len(consents) == len({ref for ref, _ in consents})


def _one_by_one(
    factory: sessionmaker[Session], raws: list[Any], config: OperatorConfig, now: datetime
) -> list[IngestResult]:
    """The event-by-event path, each event in its own savepoint of one transaction."""
    with factory() as session, session.begin():
        return [ingest_in_session(session, raw, config, now) for raw in raws]


def _answers(results: list[IngestResult]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in results]


def _snapshot(db: Database) -> dict[str, Any]:
    """Every row the events leave, without row ids and our own clock's stamps."""
    with db.session() as s:
        customers = {
            c.id: "erased" if c.erased_at else c.external_id for c in s.scalars(select(Customer))
        }
        orders = {o.id: o.external_id for o in s.scalars(select(Order))}
        surveys = {v.id: orders[v.order_id] for v in s.scalars(select(Survey))}
        return {
            "customers": sorted(
                (
                    customers[c.id],
                    c.email,
                    c.email_status,
                    c.phone,
                    c.phone_status,
                    c.phone_timezone,
                    c.first_name,
                    c.locale,
                    c.timezone,
                    c.country,
                    c.previous_orders,
                )
                for c in s.scalars(select(Customer))
            ),
            "orders": sorted(
                (
                    o.external_id,
                    customers.get(o.customer_id) if o.customer_id else None,
                    o.purchased_at,
                    o.fulfilled_at,
                    o.delivered_at,
                    o.cancelled_at,
                    str(o.total_amount),
                    o.category,
                    o.country,
                    o.is_test,
                )
                for o in s.scalars(select(Order))
            ),
            "consents": sorted(
                (
                    customers[c.customer_id],
                    c.channel,
                    c.granted,
                    c.source or "",
                    c.captured_at,
                    c.evidence_ref,
                )
                for c in s.scalars(select(ConsentRecord))
            ),
            "surveys": sorted(
                (
                    orders[v.order_id],
                    v.channel,
                    v.state,
                    v.due_at,
                    v.anchor_kind,
                    v.anchor_at,
                    v.anchor_deadline,
                    v.delay_seconds,
                    v.timezone,
                    v.config_version,
                    v.tried_channels,
                    v.final_reason,
                )
                for v in s.scalars(select(Survey))
            ),
            "transitions": sorted(
                (surveys[t.survey_id], t.from_state, t.to_state, t.reason)
                for t in s.scalars(select(SurveyTransition))
            ),
            "skips": sorted(
                (orders[k.order_id], k.reason, k.detail or "")
                for k in s.scalars(select(SkippedPurchase))
            ),
            "ledger": sorted(
                (e.external_id, e.event_type, e.subject_key or "", e.fingerprint or "")
                for e in s.scalars(select(InboundEvent))
            ),
        }


def _mixed_batch(now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events set before the batch, and a batch touching every rule of planning and ingest."""
    before = now - timedelta(days=2)
    # Purchases of a customer anew after the erasure, and an anchor event, recorded before
    # the batch; the batch sends changed copies of them around an event unlinking the customer.
    back = [purchase(f"M-back4-{n}", "c-gone4", at=before + timedelta(hours=1)) for n in range(3)]
    anchor = order_event("fulfilled", "M-anchor4", at=before)
    earlier = [
        purchase("M-old", "c-repeat", at=before),
        purchase("M-waiting", "c-wait", at=before),
        purchase("M-gone-1", "c-gone", at=before - timedelta(days=1)),
        erased("c-gone", at=before),
        purchase("M-gone3-1", "c-gone3", at=before - timedelta(days=1)),
        erased("c-gone3", at=before),
        purchase("M-gone4-1", "c-gone4", at=before - timedelta(days=1)),
        erased("c-gone4", at=before),
        *back,
        anchor,
        order_event("delivered", "M-early", at=before),  # a delivery before its purchase
        # Bought later than the batch's purchase of the same customer: the cap looks both ways.
        purchase("M-later", "c-forward", at=now + timedelta(hours=2)),
        # A grant then a revocation taking effect at the same moment: the revocation wins.
        consent_event("granted", "c-tie", at=now, email=True),
        consent_event("revoked", "c-tie", at=now, email=False),
        # A known customer with consent history and no purchase yet.
        consent_event("granted", "c-known", at=before, sms=True),
        # A revocation at `now`, then (in the batch) a grant dated ahead of our clock: it takes
        # effect when we record it, the same moment, so the revocation still wins.
        purchase("M-ahead-old", "c-ahead", at=before - timedelta(days=200)),
        consent_event("revoked", "c-ahead", at=now, email=False),
        purchase("M-fb-old", "c-fb", at=before - timedelta(days=200), phone=None),
    ]
    at = now - timedelta(hours=1)
    twice = purchase("M-twice", "c-twice", at=at)
    reused = purchase("M-reused", "c-reused", at=at)
    batch = [
        purchase("M-1", "c-1", at=at),
        purchase("M-sms", "c-sms", at=at, consent={"sms": True, "email": False}),
        purchase("M-landline", "c-landline", at=at, consent={"sms": True}, phone="+40212000000"),
        purchase("M-none", "c-none", at=at, consent={}),
        purchase("M-noemail", "c-noemail", at=at, email=None, consent={"email": True}),
        purchase("M-test", "c-test", at=at, test=True),
        purchase("M-cheap", "c-cheap", at=at, amount="0.00"),
        purchase("M-cap", "c-repeat", at=at),  # within the frequency cap of M-old
        purchase("M-a", "c-two", at=at),
        purchase("M-b", "c-two", at=at),  # the same customer twice in one batch
        purchase("M-early", "c-early", at=before - timedelta(hours=1)),
        earlier[1],  # a duplicate: claimed by no one, it shifts the run's positions
        purchase("M-gone-2", "c-gone", at=before - timedelta(hours=1)),  # before the erasure
        # After it: a customer anew, whose event keeps its ledger row's subject and digest.
        purchase("M-back", "c-gone", at=at),
        # An order recorded before the batch, sent again dated before the erasure: the last
        # event of the run to unlink the subject, the returning customer's row included.
        purchase("M-gone-1", "c-gone", at=before - timedelta(days=1)),
        # The other way round: a late event after it unlinks the ledger rows before it, the new
        # one's too.
        purchase("M-gone3-0", "c-gone3", at=before - timedelta(hours=2)),
        purchase("M-back3", "c-gone3", at=at),
        purchase("M-gone3-2", "c-gone3", at=before - timedelta(hours=1)),
        # Changed copies of events recorded before the batch: one sent before the event that
        # unlinks its customer's rows (a conflict); after it, no digest is left to tell them by
        # (duplicates, as one by one answers), also for a copy naming another customer; an
        # anchor event's row has no subject to unlink (a conflict).
        {**back[0], "total": {"amount": "5.00", "currency": "EUR"}},
        purchase("M-gone4-2", "c-gone4", at=before - timedelta(hours=1)),
        {**back[1], "total": {"amount": "5.00", "currency": "EUR"}},
        {**back[2], "customer": {**back[2]["customer"], "id": "c-other4"}},
        {**anchor, "occurred_at": now.isoformat()},
        # Read by an event applied on its own, then given a phone by a purchase of a run: the
        # revocation after it falls back to SMS with that phone.
        consent_event("granted", "c-fb", at=at, email=True),
        purchase("M-fb", "c-fb", at=at, phone="+40721000999", consent={"email": True, "sms": True}),
        consent_event("revoked", "c-fb", at=at + timedelta(minutes=1), email=False),
        # Read by an event applied on its own, then purchased in a run, then read again.
        order_event("cancelled", "M-stale", at=at),
        purchase("M-stale", "c-stale", at=at),
        order_event("refunded", "M-stale", at=at),
        order_event("delivered", "M-stale", at=at),
        purchase("M-forward", "c-forward", at=at),  # within the cap of the later M-later
        purchase("M-tie", "c-tie", at=at, consent={}),  # revoked at the same moment as granted
        purchase("M-known", "c-known", at=at, consent={}),  # sms granted before, email not
        purchase(
            "M-ahead",
            "c-ahead",
            at=at,
            consent={"email": True, "captured_at": (now + timedelta(hours=12)).isoformat()},
        ),
        order_event("delivered", "M-waiting", at=at),
        order_event("fulfilled", "M-1", at=at),  # its purchase earlier in the batch
        purchase("M-1", "c-other", at=at),  # a second purchase event for one order
        purchase("M-old", "c-other", at=at),  # and for an order recorded before the batch
        order_event("delivered", "M-unknown", at=at),  # no purchase yet
        twice,
        twice,
        reused,
        {**purchase("M-reused-2", "c-reused", at=at), "event_id": reused["event_id"]},
        consent_event("revoked", "c-sms", at=now, sms=False),
        order_event("cancelled", "M-a", at=now),
        purchase("M-after", "c-sms", at=now),
        {"type": "purchase.completed", "event_id": "bad"},
        order_event("delivered", "M-1", at=now),
        order_event("delivered", "M-old", at=now),
    ]
    return earlier, batch


@pytest.mark.parametrize("sample", [1.0, 0.5])
def test_a_batch_applied_as_sets_leaves_what_one_by_one_leaves(
    db: Database,
    tmp_path: Path,
    config: OperatorConfig,
    now: datetime,
    sample: float,
    caplog: pytest.LogCaptureFixture,
    frozen_clock: Any,
) -> None:
    config = config.model_copy(
        update={"contact": config.contact.model_copy(update={"sample_rate": sample})}
    )
    other = sqlite_database(tmp_path / "one-by-one.db")
    try:
        earlier, batch = _mixed_batch(now)
        for database in (db, other):
            _one_by_one(database.factory, earlier, config, now)
        as_sets = ingest_batch(db.factory, batch, config, now)
        assert not [r for r in caplog.records if "not applied as a set" in r.getMessage()]
        one_by_one = _one_by_one(other.factory, batch, config, now)
        if sample == 1.0:
            outcomes = {
                raw.get("order_id"): r.outcome for raw, r in zip(batch, one_by_one, strict=True)
            }
            assert outcomes["M-forward"] == "skipped: frequency_cap"
            assert outcomes["M-tie"] == "skipped: no_consent"
            assert outcomes["M-known"] == "planned: sms, waiting_anchor"
            assert outcomes["M-ahead"] == "skipped: no_consent"
        assert _answers(as_sets) == _answers(one_by_one)
        copies = {
            raw["order_id"]: r.status
            for raw, r in zip(batch, as_sets, strict=True)
            if str(raw.get("order_id")).startswith(("M-back4", "M-anchor4"))
        }
        assert copies == {
            "M-back4-0": "conflict",
            "M-back4-1": "duplicate",
            "M-back4-2": "duplicate",
            "M-anchor4": "conflict",
        }
        assert [r.outcome for r in as_sets] == [r.outcome for r in one_by_one]
        assert _snapshot(db) == _snapshot(other)
        # Sent again, every event is answered as before it was: a duplicate or a conflict.
        again = ingest_batch(db.factory, batch, config, now)
        assert {r.status for r in again} <= {"duplicate", "conflict", "rejected"}
        assert _snapshot(db) == _snapshot(other) or sample != 1.0
    finally:
        other.engine.dispose()


def _events_counted(kind: str, outcome: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("nps_events_total", {"type": kind, "outcome": outcome}) or 0.0


def test_each_event_is_counted_once_by_type_and_outcome(db, config, now, caplog):
    first = purchase("MC-1", "mc-c1", at=now - timedelta(hours=1))
    reused = {**order_event("delivered", "MC-1", at=now), "event_id": first["event_id"]}
    batch = [first, first, reused, {"type": "purchase.completed", "event_id": "mc-bad"}]
    keys = [
        ("purchase.completed", "accepted"),
        ("purchase.completed", "duplicate"),
        ("order.delivered", "conflict"),
        ("purchase.completed", "rejected"),
    ]
    before = {key: _events_counted(*key) for key in keys}
    caplog.set_level(logging.INFO, logger="ingest.service")
    results = ingest_batch(db.factory, batch, config, now)
    assert [r.status for r in results] == ["accepted", "duplicate", "conflict", "rejected"]
    assert {key: _events_counted(*key) - before[key] for key in keys} == dict.fromkeys(keys, 1.0)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert lines == ["batch of 4 events: 1 accepted, 1 conflict, 1 duplicate, 1 rejected"]


def test_a_type_we_do_not_know_is_counted_as_invalid_never_as_its_own_label(db, config, now):
    from prometheus_client import REGISTRY

    chosen = "ana@example.com"
    before = _events_counted("invalid", "rejected")
    results = ingest_batch(db.factory, [{"type": chosen, "event_id": "mx-1"}], config, now)
    assert [r.status for r in results] == ["rejected"]
    assert _events_counted("invalid", "rejected") - before == 1.0
    labels = {
        sample.labels.get("type")
        for metric in REGISTRY.collect()
        if metric.name == "nps_events"
        for sample in metric.samples
    }
    assert "invalid" in labels and chosen not in labels
    assert labels <= {"invalid", *EVENT_TYPES}
