"""Kept statements (``models.prepared``): compiled once and run as SQL text on PostgreSQL, with
the same values in and out, the same errors and the same session behaviour as executing the
statement object."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Integer, String, Table, Update, bindparam, func, select, text, update
from sqlalchemy.exc import IntegrityError, StatementError

from models import Order
from models.bulk import insert_rows, select_any
from models.prepared import run_kept
from tests.conftest import Database

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
ORDERS = Order.__table__
assert isinstance(ORDERS, Table)


def _order(external_id: str, **values: object) -> dict[str, object]:
    return {"external_id": external_id, "is_test": False, "created_at": NOW, **values}


def test_values_read_back_go_through_their_types_whatever_the_session_time_zone(
    pg_db: Database,
) -> None:
    with pg_db.session() as session, session.begin():
        # The driver hands back timestamps in the session's zone; the column type makes them UTC.
        session.execute(text("SET LOCAL TimeZone TO 'Asia/Tokyo'"))
        inserted = insert_rows(
            session,
            ORDERS,
            [_order("o-1", total_amount=Decimal("19.90"))],
            returning=[ORDERS.c.created_at, ORDERS.c.total_amount, ORDERS.c.external_id],
        )
        assert inserted is not None
        row = inserted.one()
        found = select_any(
            session,
            ("test-orders", ORDERS),
            lambda match: select(ORDERS.c.created_at).where(match(ORDERS.c.external_id)),
            ["o-1", "o-missing"],
        ).scalar_one()
    assert row.created_at == NOW and row.created_at.tzinfo is UTC
    assert found == NOW and found.tzinfo is UTC
    assert row.total_amount == Decimal("19.90") and isinstance(row.total_amount, Decimal)
    assert row.external_id == "o-1"


def test_a_default_computed_by_a_function_is_computed_for_each_execution(
    pg_db: Database,
) -> None:
    with pg_db.session() as session, session.begin():
        before = datetime.now(UTC)
        for name in ("o-1", "o-2"):
            insert_rows(session, ORDERS, [{"external_id": name, "is_test": False}])
    with pg_db.session() as session:
        stamps = session.execute(select(ORDERS.c.external_id, ORDERS.c.created_at)).all()
    assert len(stamps) == 2
    assert all(stamp >= before - timedelta(seconds=1) for _, stamp in stamps)


def test_pending_changes_of_the_session_are_flushed_before_a_kept_statement(
    pg_db: Database,
) -> None:
    with pg_db.session() as session, session.begin():
        session.add(Order(external_id="o-pending", is_test=False, created_at=NOW))
        found = select_any(
            session,
            ("test-order-ids", ORDERS),
            lambda match: select(ORDERS.c.external_id).where(match(ORDERS.c.external_id)),
            ["o-pending"],
        ).scalars()
        assert list(found) == ["o-pending"]


def test_a_refused_row_raises_the_engines_error_with_the_row_values_hidden(
    pg_db: Database,
) -> None:
    secret = "o-ana@example.com"
    with pg_db.session() as session, session.begin():
        insert_rows(session, ORDERS, [_order(secret)])
    with (
        pytest.raises(IntegrityError) as raised,
        pg_db.session() as session,
        session.begin(),
    ):
        insert_rows(session, ORDERS, [_order(secret)])
    assert secret not in str(raised.value)
    assert "hidden" in str(raised.value)
    with pg_db.session() as session:
        assert session.scalar(select(func.count()).select_from(ORDERS)) == 1


def test_a_null_written_by_the_statement_stays_null_and_a_missing_parameter_is_named(
    pg_db: Database,
) -> None:
    with pg_db.session() as session, session.begin():
        insert_rows(session, ORDERS, [_order("o-1", category="shoes")])

    def build() -> Update:
        return (
            update(ORDERS)
            .where(ORDERS.c.external_id == bindparam("wanted", type_=String()))
            .values(category=None, previous_orders=bindparam("count", type_=Integer()))
        )

    with pg_db.session() as session, session.begin():
        run_kept(session, ("test-null", ORDERS), build, {"wanted": "o-1", "count": 3})
    with (
        pytest.raises(StatementError, match="missing parameter 'count'"),
        pg_db.session() as session,
        session.begin(),
    ):
        run_kept(session, ("test-null", ORDERS), build, {"wanted": "o-1"})
    with pg_db.session() as session:
        row = session.execute(select(ORDERS.c.category, ORDERS.c.previous_orders)).one()
    assert tuple(row) == (None, 3)
