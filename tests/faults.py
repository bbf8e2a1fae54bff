"""Row triggers that make a failure or a delay real at the database boundary.

Nothing of ours is mocked: the code under test meets a real database error (or a row lock held
for real), raised by the real database, exactly where a production failure would come from.
``when`` is an SQL condition on ``NEW`` that PostgreSQL and SQLite both read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from tests.conftest import Database


@contextmanager
def refused(
    db: Database,
    table: str,
    when: str,
    *,
    on: str = "INSERT",
    message: str = "refused",
    name: str = "test_refuse",
) -> Iterator[None]:
    """A ``BEFORE {on}`` trigger on ``table`` raising ``message`` for the rows ``when`` holds
    for, dropped on leaving."""
    if db.dialect == "postgresql":
        create = [
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF {when} THEN RAISE EXCEPTION '{message}'; END IF; RETURN NEW; END $$",
            f"CREATE TRIGGER {name} BEFORE {on} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()",
        ]
        drop = [f"DROP TRIGGER IF EXISTS {name} ON {table}", f"DROP FUNCTION IF EXISTS {name}()"]
    else:
        create = [
            f"CREATE TRIGGER {name} BEFORE {on} ON {table} WHEN {when} "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
        ]
        drop = [f"DROP TRIGGER IF EXISTS {name}"]
    with _created(db, create, drop):
        yield


@contextmanager
def failing_once(
    db: Database, table: str, when: str, sqlstate: str, *, name: str = "test_fail_once"
) -> Iterator[None]:
    """PostgreSQL: the first ``INSERT`` into ``table`` of a row that ``when`` holds for fails
    with ``sqlstate`` (``40P01``, a deadlock, say), as the server reports it; the next such
    insert goes through. A sequence counts the tries, outside any transaction's rollback."""
    assert db.dialect == "postgresql", "an error with a chosen SQLSTATE needs PostgreSQL"
    create = [
        f"CREATE SEQUENCE {name}_tries",
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF ({when}) AND nextval('{name}_tries') = 1 THEN "
        f"RAISE EXCEPTION 'failing once' USING ERRCODE = '{sqlstate}'; END IF; RETURN NEW; END $$",
        f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()",
    ]
    drop = [
        f"DROP TRIGGER IF EXISTS {name} ON {table}",
        f"DROP FUNCTION IF EXISTS {name}()",
        f"DROP SEQUENCE IF EXISTS {name}_tries",
    ]
    with _created(db, create, drop):
        yield


@contextmanager
def slowed(
    db: Database, table: str, when: str, seconds: float, *, name: str = "test_slow"
) -> Iterator[None]:
    """PostgreSQL: updating a row of ``table`` that ``when`` holds for takes ``seconds`` more,
    its transaction holding the row's lock meanwhile, as a slow request would."""
    assert db.dialect == "postgresql", "a row lock held for a while needs PostgreSQL"
    create = [
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF {when} THEN PERFORM pg_sleep({seconds}); END IF; RETURN NEW; END $$",
        f"CREATE TRIGGER {name} BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()",
    ]
    with _created(db, create, [f"DROP TRIGGER {name} ON {table}", f"DROP FUNCTION {name}()"]):
        yield


@contextmanager
def _created(db: Database, create: list[str], drop: list[str]) -> Iterator[None]:
    with db.engine.begin() as conn:
        for statement in create:
            conn.execute(text(statement))
    try:
        yield
    finally:
        with db.engine.begin() as conn:
            for statement in drop:
                conn.execute(text(statement))
