"""Single events from many threads applied in shared groups (``ingest.grouped``): each thread
gets its own event's outcome, the one the event gets applied alone after the events before it,
on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from ingest.grouped import GroupedIngest, GroupFailed, grouped_ingest
from ingest.service import IngestResult, ingest_event
from models import ConsentRecord, Customer, InboundEvent, Order, SkippedPurchase, Survey
from models.session import make_engine, make_session_factory
from tests.conftest import Database, sqlite_database
from tests.factories import consent_event, erased, order_event, purchase
from tests.ingest.faults import surveys_refused_for_fail_orders


@dataclass
class Where:
    factory: sessionmaker[Session]
    config: OperatorConfig


class Gate:
    """A context whose first call (made by the thread applying the first group) waits until the
    gate opens, so that the events submitted meanwhile wait together for the next group."""

    def __init__(self, where: Callable[[], Where]) -> None:
        self.where = where
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self) -> Where:
        if not self.entered.is_set():
            self.entered.set()
            assert self.opened.wait(30)
        return self.where()


def _waiting(grouped: GroupedIngest) -> int:
    # How many events wait for the next group: read from the group commit itself, the one way
    # to know that a thread has handed its event in without a timer.
    return len(grouped._commit._waiting)


def _handed_in(grouped: GroupedIngest, n: int) -> bool:
    return _waiting(grouped) == n


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the threads did not hand their events in"
        time.sleep(0.005)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=40) as executor:
        yield executor


def gate_event() -> dict[str, Any]:
    return purchase("GATE-1", "gate-c", event_id="gate-1")


def submit_as_one_group(
    grouped: GroupedIngest, gate: Gate, events: list[Any], pool: ThreadPoolExecutor
) -> list[Future[IngestResult]]:
    """Each event from its own thread, in the order given, all in one group: the gate holds a
    first group (a purchase of its own) until every event waits behind it."""
    first = pool.submit(grouped.submit, gate_event())
    assert gate.entered.wait(30)
    futures = []
    for n, event in enumerate(events, start=1):
        futures.append(pool.submit(grouped.submit, event))
        _until(partial(_handed_in, grouped, n))
    gate.opened.set()
    assert first.result(timeout=60).status == "accepted"
    return futures


def count(db: Database, model: Any, *where: Any) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_threads_submitting_at_once_each_get_their_own_result_and_rows(
    db: Database, config: OperatorConfig, frozen_clock: Any, pool: ThreadPoolExecutor
) -> None:
    gate = Gate(lambda: Where(db.factory, config))
    grouped = GroupedIngest(gate)
    # Three customers with several orders each, so the group shares customers too.
    events = [purchase(f"GT-{n}", f"gt-c{n % 3}", event_id=f"gt-{n}") for n in range(24)]
    futures = submit_as_one_group(grouped, gate, events, pool)
    results = [f.result(timeout=60) for f in futures]
    assert [r.event_id for r in results] == [e["event_id"] for e in events]
    # The first purchase of each customer plans a survey; the later ones hit the frequency cap.
    assert [r.status for r in results] == ["accepted"] * 24
    planned = [r.outcome for r in results[:3]]
    assert all(outcome is not None and outcome.startswith("planned") for outcome in planned)
    assert {r.outcome for r in results[3:]} == {"skipped: frequency_cap"}
    stats = grouped.stats()
    assert (stats.groups, stats.events) == (2, 25)
    assert count(db, InboundEvent) == 25 and count(db, Order) == 25
    assert count(db, Customer) == 4 and count(db, Survey) == 4
    assert count(db, SkippedPurchase) == 21


def test_threads_racing_without_a_gate_all_commit(
    db: Database, config: OperatorConfig, frozen_clock: Any, pool: ThreadPoolExecutor
) -> None:
    grouped = GroupedIngest(lambda: Where(db.factory, config))
    events = [purchase(f"GR-{n}", f"gr-c{n}", event_id=f"gr-{n}") for n in range(40)]
    results = list(pool.map(grouped.submit, events))
    assert [(r.event_id, r.status) for r in results] == [
        (e["event_id"], "accepted") for e in events
    ]
    assert grouped.stats().events == 40
    assert count(db, InboundEvent) == 40 and count(db, Survey) == 40


def _mixed_events() -> list[dict[str, Any]]:
    """Events about the same ids, orders and customers, in an order where each matters."""
    first = purchase("GM-1", "gm-c1", event_id="gm-1")
    invalid = purchase("GM-9", "gm-c9", event_id="gm-9")
    del invalid["customer"]["id"]
    return [
        first,
        {**first},  # the same event again: a duplicate
        order_event("cancelled", "GM-1", event_id="gm-1"),  # its event_id for other content
        invalid,
        order_event("delivered", "GM-1", at="2026-11-20T09:30:00Z", event_id="gm-2"),
        purchase("GM-2", "gm-c1", event_id="gm-3"),  # the same customer: the frequency cap
        purchase("GM-3", "gm-c2", event_id="gm-4"),
        consent_event("revoked", "gm-c2", at="2026-11-20T09:00:00Z", email=False),
        purchase("GM-4", "gm-c3", event_id="gm-5"),
        erased("gm-c3", at="2026-11-20T09:00:00Z"),
        purchase("GM-5", "gm-c3", at="2026-11-20T08:00:00Z", event_id="gm-6"),  # late, erased
        order_event("delivered", "GM-6", at="2026-11-20T09:00:00Z", event_id="gm-7"),
        purchase("GM-6", "gm-c4", at="2026-11-20T08:00:00Z", event_id="gm-8"),  # after its anchor
    ]


def _said(result: IngestResult) -> tuple[Any, ...]:
    return (result.event_id, result.status, result.outcome, result.retryable, result.error)


def _stored(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """The rows the events left; an erased customer's random placeholder id read as "erased"."""
    with db.session() as s:
        stored: dict[str, list[Any]] = {
            "ledger": sorted(
                s.execute(select(InboundEvent.external_id, InboundEvent.fingerprint)).all()
            ),
            "orders": sorted(
                s.execute(
                    select(
                        Order.external_id,
                        Order.purchased_at,
                        Order.delivered_at,
                        Order.cancelled_at,
                        Order.customer_id.is_(None),
                    )
                ).all()
            ),
            "surveys": sorted(
                s.execute(
                    select(Order.external_id, Survey.state, Survey.channel, Survey.due_at).join(
                        Order, Order.id == Survey.order_id
                    )
                ).all()
            ),
            "skips": sorted(
                s.execute(
                    select(Order.external_id, SkippedPurchase.reason).join(
                        Order, Order.id == SkippedPurchase.order_id
                    )
                ).all()
            ),
            "consents": sorted(
                s.execute(
                    select(
                        Customer.external_id,
                        ConsentRecord.channel,
                        ConsentRecord.granted,
                        ConsentRecord.captured_at,
                    ).join(Customer, Customer.id == ConsentRecord.customer_id)
                ).all()
            ),
            "customers": sorted(s.execute(select(Customer.external_id, Customer.email)).all()),
        }
    return {
        name: sorted(
            tuple("erased" if str(v).startswith("erased:") else v for v in row) for row in rows
        )
        for name, rows in stored.items()
    }


def test_a_group_applies_its_events_as_if_one_after_the_other(
    db: Database,
    config: OperatorConfig,
    frozen_clock: Any,
    pool: ThreadPoolExecutor,
    tmp_path: Any,
) -> None:
    events = _mixed_events()
    gate = Gate(lambda: Where(db.factory, config))
    grouped = GroupedIngest(gate)
    futures = submit_as_one_group(grouped, gate, events, pool)
    grouped_results = [f.result(timeout=60) for f in futures]
    assert grouped.stats().groups == 2

    alone = sqlite_database(tmp_path / "alone.db")
    ingest_event(alone.factory, gate_event(), config)
    alone_results = [ingest_event(alone.factory, event, config) for event in events]

    assert [_said(r) for r in grouped_results] == [_said(r) for r in alone_results]
    statuses = [r.status for r in grouped_results]
    assert statuses[:4] == ["accepted", "duplicate", "conflict", "rejected"]
    assert not any(r.retryable for r in grouped_results)
    assert _stored(db) == _stored(alone)


def test_a_group_the_database_refuses_fails_in_every_thread_then_each_event_applies_once(
    db: Database,
    config: OperatorConfig,
    frozen_clock: Any,
    pool: ThreadPoolExecutor,
    tmp_path: Any,
) -> None:
    if db.dialect == "postgresql":
        away = make_engine("postgresql+psycopg://nps:nps@127.0.0.1:1/absent")
    else:
        away = make_engine(f"sqlite:///{tmp_path / 'no such directory' / 'away.db'}")
    down = Where(make_session_factory(away), config)
    up = Where(db.factory, config)
    state = {"where": down}
    gate = Gate(lambda: state["where"])
    grouped = GroupedIngest(gate)
    events = [purchase(f"GD-{n}", f"gd-c{n}", event_id=f"gd-{n}") for n in range(8)]
    first = pool.submit(grouped.submit, events[0])
    assert gate.entered.wait(30)
    futures = [pool.submit(grouped.submit, event) for event in events[1:]]
    _until(lambda: _waiting(grouped) == len(events) - 1)
    gate.opened.set()
    for future in [first, *futures]:
        error = future.exception(timeout=60)
        # Either the group raised, or each event is answered as failed on our side.
        assert error is not None or future.result().retryable
    assert count(db, InboundEvent) == 0

    # The messages run again, each once more than needed (a redelivered copy).
    state["where"] = up
    again = list(pool.map(grouped.submit, events + events))
    assert [r.status for r in again[: len(events)]].count("accepted") == len(events)
    assert {r.status for r in again[len(events) :]} == {"duplicate"}
    assert count(db, InboundEvent) == len(events) and count(db, Order) == len(events)
    assert count(db, Survey) == len(events)
    away.dispose()


def test_an_event_failing_on_our_side_fails_alone_and_applies_when_sent_again(
    db: Database, config: OperatorConfig, frozen_clock: Any, pool: ThreadPoolExecutor
) -> None:
    gate = Gate(lambda: Where(db.factory, config))
    grouped = GroupedIngest(gate)
    good = [purchase(f"GF-{n}", f"gf-c{n}", event_id=f"gf-{n}") for n in range(3)]
    failing = purchase("FAIL-1", "gf-c9", event_id="gf-9")
    with surveys_refused_for_fail_orders(db):
        futures = submit_as_one_group(grouped, gate, [good[0], failing, *good[1:]], pool)
        results = [f.result(timeout=60) for f in futures]
    assert [(r.status, r.retryable) for r in results] == [
        ("accepted", False),
        ("rejected", True),
        ("accepted", False),
        ("accepted", False),
    ]
    assert count(db, Order, Order.external_id == "FAIL-1") == 0
    assert grouped.submit(failing).status == "accepted"
    assert count(db, Survey) == 5


def test_an_interrupted_group_fails_as_an_ordinary_error(
    db: Database, config: OperatorConfig
) -> None:
    def interrupted() -> Where:
        raise KeyboardInterrupt

    grouped = GroupedIngest(interrupted)
    with pytest.raises(GroupFailed):
        grouped.submit(purchase("GI-1"))
    assert count(db, InboundEvent) == 0


def test_a_process_has_one_grouped_ingest_per_context(db: Database, config: OperatorConfig) -> None:
    def context() -> Where:
        return Where(db.factory, config)

    def other() -> Where:
        return Where(db.factory, config)

    assert grouped_ingest(context) is grouped_ingest(context)
    assert grouped_ingest(context) is not grouped_ingest(other)


def test_an_event_waiting_on_a_row_lock_holds_back_no_unrelated_event(
    pg_db: Database, config: OperatorConfig
) -> None:
    """A customer's row held by another session (an erasure, an idle transaction) stalls the
    group holding that customer's event; an event about someone else goes in a group beside it
    and commits, and the stalled one applies once the lock is released."""
    assert ingest_event(pg_db.factory, purchase("HL-0", "hl-locked"), config).status == "accepted"
    grouped = GroupedIngest(lambda: Where(pg_db.factory, config))
    grouped._commit._stall_after = 0.2
    holder = pg_db.engine.connect()
    holder.execute(select(Customer.id).where(Customer.external_id == "hl-locked").with_for_update())
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            stuck = pool.submit(grouped.submit, purchase("HL-1", "hl-locked"))
            try:
                deadline = time.monotonic() + 10
                while not grouped._commit._running:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                other = pool.submit(grouped.submit, purchase("HL-2", "hl-someone-else"))
                assert other.result(timeout=10).status == "accepted"
                assert not stuck.done()
            finally:
                holder.rollback()  # also when failing: the pool waits for its threads
            assert stuck.result(timeout=30).status == "accepted"
    finally:
        holder.close()
    with pg_db.session() as s:
        assert s.scalar(select(func.count()).select_from(Order)) == 3
