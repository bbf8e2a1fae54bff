"""Statements over many rows: the same rows and values as row-by-row statements, on both
backends, whatever the number of rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Table, event, func, insert, select
from sqlalchemy.exc import DBAPIError, StatementError

from models import Order
from models.bulk import insert_rows, is_any, update_rows
from tests.conftest import Database

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
ORDERS = Order.__table__
assert isinstance(ORDERS, Table)


def _order(external_id: str, **values: object) -> dict[str, object]:
    row: dict[str, object] = {
        "external_id": external_id,
        "is_test": False,
        "created_at": NOW,
        "categories": None,
        "total_amount": None,
        "previous_orders": None,
    }
    row.update(values)
    return row


def _count_statements(db: Database) -> list[str]:
    seen: list[str] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def record(*args: object) -> None:
        statement = args[2]
        assert isinstance(statement, str)
        seen.append(statement)

    return seen


def test_inserted_values_read_back_as_given_on_both_backends(db: Database) -> None:
    rows = [
        _order("o-1", categories=["shoes", "socks"], total_amount=Decimal("19.90")),
        _order("o-2", created_at=NOW.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))),
        _order("o-3", previous_orders=4),
    ]
    with db.session() as session, session.begin():
        result = insert_rows(session, ORDERS, rows, returning=[ORDERS.c.external_id])
        assert result is not None
        assert sorted(result.scalars()) == ["o-1", "o-2", "o-3"]
    with db.session() as session:
        got = {
            row.external_id: row
            for row in session.execute(
                select(
                    ORDERS.c.external_id,
                    ORDERS.c.categories,
                    ORDERS.c.total_amount,
                    ORDERS.c.created_at,
                    ORDERS.c.previous_orders,
                )
            )
        }
    assert got["o-1"].categories == ["shoes", "socks"]
    assert got["o-1"].total_amount == Decimal("19.90")
    assert got["o-2"].created_at == NOW  # stored in UTC whatever the zone given
    assert got["o-3"].previous_orders == 4
    assert got["o-3"].categories is None


def test_json_none_is_stored_as_a_single_row_insert_stores_it(db: Database) -> None:
    with db.session() as session, session.begin():
        insert_rows(session, ORDERS, [_order("bulk")])
        session.execute(insert(ORDERS).values(_order("single")))
    with db.session() as session:
        kinds = {
            row.external_id: row.is_null
            for row in session.execute(
                select(ORDERS.c.external_id, ORDERS.c.categories.is_(None).label("is_null"))
            )
        }
    assert kinds["bulk"] == kinds["single"]


def test_conflicting_keys_are_skipped_and_only_new_rows_come_back(db: Database) -> None:
    with db.session() as session, session.begin():
        insert_rows(session, ORDERS, [_order("a"), _order("b")])
    with db.session() as session, session.begin():
        result = insert_rows(
            session,
            ORDERS,
            [_order("b"), _order("c")],
            ignoring=["external_id"],
            returning=[ORDERS.c.external_id],
        )
        assert result is not None
        assert list(result.scalars()) == ["c"]
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(ORDERS)) == 3


def test_a_naive_datetime_is_refused_and_nothing_is_written(db: Database) -> None:
    with (
        db.session() as session,
        pytest.raises(StatementError, match="naive datetime"),
        session.begin(),
    ):
        insert_rows(session, ORDERS, [_order("ok"), _order("bad", created_at=datetime(2026, 1, 1))])
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(ORDERS)) == 0


def test_updates_apply_per_row_and_respect_the_extra_condition(db: Database) -> None:
    with db.session() as session, session.begin():
        result = insert_rows(
            session,
            ORDERS,
            [_order(f"u-{i}") for i in range(5)],
            returning=[ORDERS.c.id, ORDERS.c.external_id],
        )
        assert result is not None
        ids: dict[str, int] = {row.external_id: row.id for row in result}
    changes = [
        {
            "id": ids[f"u-{i}"],
            "previous_orders": i,
            "categories": [f"c{i}"],
            "purchased_at": NOW + timedelta(days=i),
        }
        for i in range(5)
    ]
    with db.session() as session, session.begin():
        update_rows(
            session,
            ORDERS,
            ["previous_orders", "categories", "purchased_at"],
            changes,
            ORDERS.c.external_id != "u-2",
        )
    with db.session() as session:
        got = {
            row.external_id: row
            for row in session.execute(
                select(
                    ORDERS.c.external_id,
                    ORDERS.c.previous_orders,
                    ORDERS.c.categories,
                    ORDERS.c.purchased_at,
                )
            )
        }
    for i in range(5):
        row = got[f"u-{i}"]
        if i == 2:
            assert (row.previous_orders, row.categories, row.purchased_at) == (None, None, None)
        else:
            assert (row.previous_orders, row.categories, row.purchased_at) == (
                i,
                [f"c{i}"],
                NOW + timedelta(days=i),
            )


def test_postgresql_writes_and_matches_any_number_of_rows_in_one_statement(pg_db: Database) -> None:
    seen = _count_statements(pg_db)
    many = [_order(f"m-{i:05d}") for i in range(3000)]
    with pg_db.session() as session, session.begin():
        insert_rows(session, ORDERS, many, ignoring=["external_id"])
        found = session.scalar(
            select(func.count())
            .select_from(ORDERS)
            .where(is_any(session, ORDERS.c.external_id, [row["external_id"] for row in many]))
        )
        ids = list(session.scalars(select(ORDERS.c.id)))
        update_rows(
            session, ORDERS, ["previous_orders"], [{"id": i, "previous_orders": 1} for i in ids]
        )
    assert found == 3000
    writes = [
        s for s in seen if s.lstrip().upper().startswith(("INSERT", "UPDATE", "SELECT COUNT"))
    ]
    assert len(writes) == 3
    with pg_db.session() as session:
        assert session.scalar(select(func.count()).where(ORDERS.c.previous_orders == 1)) == 3000


def test_nothing_to_write_sends_nothing(db: Database) -> None:
    seen = _count_statements(db)
    with db.session() as session, session.begin():
        assert insert_rows(session, ORDERS, []) is None
        update_rows(session, ORDERS, ["previous_orders"], [])
    assert not [s for s in seen if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]


def test_an_over_long_text_is_refused_on_postgresql_not_cut(pg_db: Database) -> None:
    """An explicit cast to VARCHAR(n) would cut the value silently; the column refuses it."""
    too_long = "o-" + "x" * 127  # external_id holds 128 characters
    with pytest.raises(DBAPIError, match="too long"), pg_db.session() as session, session.begin():
        insert_rows(session, ORDERS, [_order("o-short"), _order(too_long)])
    with pg_db.session() as session:
        assert session.scalar(select(func.count()).select_from(ORDERS)) == 0
    with pg_db.session() as session:
        with session.begin():
            inserted = insert_rows(session, ORDERS, [_order("o-1")], returning=[ORDERS.c.id])
            assert inserted is not None
            order_id = inserted.scalar_one()
        with pytest.raises(DBAPIError, match="too long"), session.begin():
            # currency holds 3 characters
            update_rows(session, ORDERS, ["currency"], [{"id": order_id, "currency": "EURO"}])


def test_postgresql_builds_each_statement_once_and_reuses_it(pg_db: Database) -> None:
    from models import prepared

    with pg_db.session() as session, session.begin():
        insert_rows(session, ORDERS, [_order("o-1")])
        kept = len(prepared._kept)
        inserted = insert_rows(session, ORDERS, [_order("o-2"), _order("o-3", previous_orders=2)])
        assert inserted is not None
        assert len(prepared._kept) == kept  # same table and columns: the same statement
        ids = session.scalars(select(ORDERS.c.id).order_by(ORDERS.c.id)).all()
        update_rows(session, ORDERS, ["currency"], [{"id": ids[0], "currency": "EUR"}])
        kept = len(prepared._kept)
        update_rows(session, ORDERS, ["currency"], [{"id": i, "currency": "USD"} for i in ids[1:]])
        assert len(prepared._kept) == kept
    with pg_db.session() as session:
        got = {row.external_id: row.currency for row in session.execute(select(ORDERS))}
    assert got == {"o-1": "EUR", "o-2": "USD", "o-3": "USD"}


def test_columns_of_only_nulls_and_awkward_text_read_back_as_given(db: Database) -> None:
    """Arrays travel in the driver's binary format on PostgreSQL: nothing is quoted or escaped,
    and a column holding only NULLs still takes its type from the statement."""
    awkward = ['a "quoted", {braced} \\ value', "NULL", "", "ünïcödé ✓", "o'clock"]
    rows = [_order(f"n-{i}", categories=[text]) for i, text in enumerate(awkward)]
    with db.session() as session, session.begin():
        insert_rows(session, ORDERS, rows)
        ids = {
            r.external_id: r.id for r in session.execute(select(ORDERS.c.external_id, ORDERS.c.id))
        }
        update_rows(
            session,
            ORDERS,
            ["previous_orders", "purchased_at", "total_amount"],
            [
                {
                    "id": ids[row["external_id"]],
                    "previous_orders": None,
                    "purchased_at": None,
                    "total_amount": None,
                }
                for row in rows
            ],
        )
    with db.session() as session:
        got = {
            row.external_id: row.categories
            for row in session.execute(
                select(ORDERS.c.external_id, ORDERS.c.categories).where(
                    ORDERS.c.external_id.like("n-%"),
                    ORDERS.c.previous_orders.is_(None),
                    ORDERS.c.purchased_at.is_(None),
                    ORDERS.c.total_amount.is_(None),
                )
            )
        }
    assert got == {f"n-{i}": [text] for i, text in enumerate(awkward)}


def test_rows_with_different_columns_are_refused_and_nothing_is_written(db: Database) -> None:
    rows = [_order("k-1"), {**_order("k-2"), "purchased_at": NOW}]
    with (
        db.session() as session,
        session.begin(),
        pytest.raises(ValueError, match="same columns"),
    ):
        insert_rows(session, ORDERS, rows)
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(ORDERS)) == 0
