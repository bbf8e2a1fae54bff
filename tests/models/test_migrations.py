"""The schema is built by the migrations, and the migrations match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from migrations.runner import downgrade, upgrade
from models import Base
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
