"""The schema is built by the migrations, and the migrations match the models."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text

from migrations.runner import downgrade, upgrade
from models import Base, ConsentRecord, Customer
from tests.conftest import Database


def test_models_and_migrations_do_not_drift(db: Database):
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], f"models and migrations differ; write a migration: {diff}"


def test_downgrade_to_base_and_up_again(sqlite_db: Database):
    downgrade(sqlite_db.engine, "base")
    assert set(inspect(sqlite_db.engine).get_table_names()) <= {"alembic_version"}
    upgrade(sqlite_db.engine)
    assert {"surveys", "orders", "customers"} <= set(inspect(sqlite_db.engine).get_table_names())


def test_pending_index_is_partial_on_postgres(pg_db: Database):
    indexes = {i["name"]: i for i in inspect(pg_db.engine).get_indexes("surveys")}
    assert "ix_surveys_due_pending" in indexes
    where = indexes["ix_surveys_due_pending"].get("dialect_options", {}).get("postgresql_where")
    assert where is not None and "scheduled" in str(where)


def test_the_phone_timezone_migrations_go_down_and_up_again(db: Database):
    def state() -> tuple[bool, bool]:
        inspector = inspect(db.engine)
        column = "phone_timezone" in {c["name"] for c in inspector.get_columns("customers")}
        query = (
            "SELECT count(*) FROM pg_trigger WHERE tgname = :name"
            if db.engine.dialect.name == "postgresql"
            else "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = :name"
        )
        with db.engine.connect() as conn:
            trigger = conn.scalar(text(query), {"name": "customers_phone_timezone_follows_phone"})
        return column, bool(trigger)

    assert state() == (True, True)
    with db.session() as s, s.begin():
        customer = Customer(external_id="kept", phone="+40721000111", phone_timezone="Asia/Tokyo")
        s.add(customer)
        s.flush()
        s.add(
            ConsentRecord(
                customer_id=customer.id,
                channel="sms",
                granted=True,
                captured_at=datetime(2026, 11, 20, tzinfo=UTC),
                evidence_kind="event",
            )
        )
    try:
        downgrade(db.engine, "0008")  # the column, without its trigger
        assert state() == (True, False)
        # A database where 0008 had installed the trigger too (as it once did) goes down too.
        with db.engine.begin() as conn:
            for statement in _TRIGGER_SQL[db.engine.dialect.name]:
                conn.execute(text(statement))
        assert state() == (True, True)
        downgrade(db.engine, "0007")
        assert state() == (False, False)
    finally:
        upgrade(db.engine)
    assert state() == (True, True)
    with db.session() as s:  # nothing else was lost on the way (no table was copied)
        assert s.execute(select(Customer.external_id, Customer.phone)).all() == [
            ("kept", "+40721000111")
        ]
        assert s.scalar(select(func.count()).select_from(ConsentRecord)) == 1


_TRIGGER_SQL = {
    "postgresql": [
        "CREATE FUNCTION customers_phone_timezone_follows_phone() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN NEW.phone_timezone := NULL; RETURN NEW; END $$",
        "CREATE TRIGGER customers_phone_timezone_follows_phone "
        "BEFORE UPDATE OF phone ON customers FOR EACH ROW "
        "EXECUTE FUNCTION customers_phone_timezone_follows_phone()",
    ],
    "sqlite": [
        "CREATE TRIGGER customers_phone_timezone_follows_phone "
        "AFTER UPDATE OF phone ON customers FOR EACH ROW "
        "BEGIN UPDATE customers SET phone_timezone = NULL WHERE id = NEW.id; END"
    ],
}
