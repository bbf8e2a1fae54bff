"""Two workers applying the first events about one new customer or one new order at the same
time: on PostgreSQL both must succeed against one row, neither fails on the unique constraint
(a failure there would send the event to a retry, or answer an API client that it was rejected)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ingest.apply import _order, upsert_customer
from ingest.schema import CustomerIn
from models import Customer, Order
from tests.conftest import Database


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
