"""Two workers applying the first events about one new customer or one new order at the same
time: on PostgreSQL both must succeed against one row, neither fails on the unique constraint
(a failure there would send the event to a retry, or answer an API client that it was rejected)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from config import OperatorConfig
from ingest.apply import _order, upsert_customer
from ingest.schema import CustomerIn
from ingest.service import ingest_batch
from models import Customer, Order, Survey
from tests.conftest import Database
from tests.factories import purchase


def _race(db: Database, create: Callable[[Session], Customer | Order]) -> list[int]:
    """Runs ``create(session)`` in two transactions: the first inserts and holds its transaction
    open until the second has started its own insert, then commits; returns both row ids."""
    first_inserted = threading.Event()

    def first() -> int:
        with db.session() as s:
            row_id: int = create(s).id
            first_inserted.set()
            # Give the second transaction time to reach the insert and wait on this one.
            threading.Event().wait(0.5)
            s.commit()
            return row_id

    def second() -> int:
        first_inserted.wait(10)
        with db.session() as s:
            row_id: int = create(s).id
            s.commit()
            return row_id

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(first), pool.submit(second)]
        return [f.result(timeout=30) for f in futures]


def test_two_first_events_about_one_new_customer_share_one_row(pg_db: Database) -> None:
    ids = _race(pg_db, lambda s: upsert_customer(s, CustomerIn(id="C-race", email="a@example.com")))
    assert ids[0] == ids[1]
    with pg_db.session() as s:
        count = s.scalar(select(func.count()).where(Customer.external_id == "C-race"))
        assert count == 1


def test_two_first_events_about_one_new_order_share_one_row(pg_db: Database) -> None:
    ids = _race(pg_db, lambda s: _order(s, "O-race"))
    assert ids[0] == ids[1]
    with pg_db.session() as s:
        assert s.scalar(select(func.count()).where(Order.external_id == "O-race")) == 1


def test_a_batch_caught_in_a_deadlock_is_run_again_and_commits_every_event(
    pg_db: Database, config: OperatorConfig, now: datetime
) -> None:
    # Another transaction holds customer Y; the batch locks X with its first event and waits
    # for Y with its second; then the other transaction asks for X. PostgreSQL aborts the
    # batch's statement (it waited first). Retrying only that event would keep X locked, the
    # other transaction would keep waiting and the retry would deadlock again.
    ingest_batch(pg_db.factory, [purchase("D-0", "X"), purchase("D-00", "Y")], config, now)
    with pg_db.session() as other, ThreadPoolExecutor(1) as pool:
        other.execute(select(Customer.id).where(Customer.external_id == "Y").with_for_update())
        batch = pool.submit(
            ingest_batch, pg_db.factory, [purchase("D-1", "X"), purchase("D-2", "Y")], config, now
        )
        _wait_for_a_lock_wait(other)
        other.execute(select(Customer.id).where(Customer.external_id == "X").with_for_update())
        other.commit()
        statuses = [r.status for r in batch.result(timeout=60)]
    assert statuses == ["accepted", "accepted"]
    with pg_db.session() as s:
        purchased = s.scalars(select(Order.external_id).where(Order.purchased_at.is_not(None)))
        assert sorted(purchased) == ["D-0", "D-00", "D-1", "D-2"]


def _wait_for_a_lock_wait(session: Session) -> None:
    for _ in range(200):
        waiting = session.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))
        if waiting:
            return
        threading.Event().wait(0.05)
    raise TimeoutError("the batch never waited for the lock")


def test_a_batch_run_again_logs_each_event_accepted_once(
    pg_db: Database, config: OperatorConfig, now: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    ingest_batch(pg_db.factory, [purchase("L-0", "X"), purchase("L-00", "Y")], config, now)
    first, second = purchase("L-1", "X"), purchase("L-2", "Y")
    caplog.set_level(logging.DEBUG, logger="ingest.service")
    with pg_db.session() as other, ThreadPoolExecutor(1) as pool:
        other.execute(select(Customer.id).where(Customer.external_id == "Y").with_for_update())
        batch = pool.submit(ingest_batch, pg_db.factory, [first, second], config, now)
        _wait_for_a_lock_wait(other)
        other.execute(select(Customer.id).where(Customer.external_id == "X").with_for_update())
        other.commit()
        assert [r.status for r in batch.result(timeout=60)] == ["accepted", "accepted"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("rolled back and retried" in m for m in messages)
    for event in (first, second):
        said = [m for m in messages if m.startswith(f"event {event['event_id']} ")]
        assert len(said) == 1 and "(purchase.completed) accepted" in said[0]


def test_two_batches_about_one_customer_and_one_order_plan_one_survey(
    pg_db: Database, config: OperatorConfig, now: datetime
) -> None:
    """The first batch is applied as sets and held open; the second, about the same order and
    customer, waits for it and then sees what it planned: the order is recorded once and the
    frequency cap holds across the two batches."""
    from ingest.service import _ingest_set

    at = now - timedelta(hours=1)
    first = [purchase("B-shared", "C-both", at=at), purchase("B-1", "C-both", at=at)]
    second = [purchase("B-shared", "C-both", at=at), purchase("B-2", "C-both", at=at)]
    with pg_db.session() as holding, ThreadPoolExecutor(1) as pool:
        held = _ingest_set(holding, first, config, now, raise_transient=False)
        assert [r.outcome for r in held] == [
            "planned: email, waiting_anchor",
            "skipped: frequency_cap",
        ]
        later = pool.submit(ingest_batch, pg_db.factory, second, config, now)
        _wait_for_a_lock_wait(holding)
        holding.commit()
        outcomes = [r.outcome for r in later.result(timeout=60)]
    assert outcomes == ["order already recorded", "skipped: frequency_cap"]
    with pg_db.session() as s:
        assert s.scalar(select(func.count()).select_from(Survey)) == 1
        assert s.scalar(select(func.count()).where(Order.external_id == "B-shared")) == 1
