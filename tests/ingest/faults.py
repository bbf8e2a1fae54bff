"""Failures made real at the database boundary: a trigger that refuses a write, a held lock.

Nothing of ours is mocked: the code under test meets a real database error, raised by the real
database, exactly where a production failure would come from.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import event, text

from models.session import make_engine, make_session_factory
from tests.conftest import Database
from tests.faults import refused

# The trigger's own message names a person, as a database error quoting a bound value would:
# it must never reach a client, a log line or a dead letter.
TRIGGER_SECRET = "refused for secret.person@example.com"


def surveys_refused_for_fail_orders(db: Database) -> AbstractContextManager[None]:
    """Planning a survey for an order whose id starts with ``FAIL-`` raises a database error.

    It strikes late in applying a purchase, after the ledger claim, the customer, the consent
    records and the order were written, so a rollback that missed any of them would show.
    """
    when = "(SELECT external_id FROM orders WHERE id = NEW.order_id) LIKE 'FAIL-%'"
    return refused(db, "surveys", when, message=TRIGGER_SECRET, name="test_refuse_survey")


def impatient(db: Database, wait_ms: int = 200) -> Database:
    """A second engine on the same database that waits at most ``wait_ms`` for a lock."""
    url = db.engine.url.render_as_string(hide_password=False)
    if db.dialect == "postgresql":
        engine = make_engine(url, connect_args={"options": f"-c lock_timeout={wait_ms}"})
    else:
        engine = make_engine(url)

        def short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute(f"PRAGMA busy_timeout={wait_ms}")

        event.listen(engine, "connect", short_busy_timeout)
    return Database(engine, make_session_factory(engine))


@contextmanager
def ingest_locked_out(db: Database) -> Iterator[None]:
    """Hold, from another connection, a lock every ingest needs: SQLite's write lock (the
    engine begins with BEGIN IMMEDIATE), or on PostgreSQL an EXCLUSIVE lock on the ledger."""
    with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("LOCK TABLE inbound_events IN EXCLUSIVE MODE"))
        yield
