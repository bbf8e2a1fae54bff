"""Engines and sessions for SQLite (embedded default) and PostgreSQL (production).

Every engine keeps the data it writes out of its error messages and its log: bound parameters
are hidden (``hide_parameters``), and so is the DETAIL line PostgreSQL adds to a constraint
violation, which quotes the failing row or key ("Failing row contains (..., ana@example.com,
...)"). The driver keeps that detail for code that needs it (``exc.orig.diag.message_detail``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.orm import Session, sessionmaker

# The server's DETAIL and CONTEXT lines (values of the row, key or input at fault).
_SERVER_DETAIL = re.compile(r"^(DETAIL|CONTEXT):.*$", re.MULTILINE)
_DETAIL_HIDDEN = r"\1:  (hidden: it may quote row values)"


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINT; take it over.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    else:
        kwargs.setdefault("pool_pre_ping", True)
        engine = create_engine(url, **kwargs)
    event.listen(engine, "handle_error", _hide_server_detail)
    return engine


def _hide_server_detail(context: ExceptionContext) -> None:
    """Rewrite the message of the driver's exception and of SQLAlchemy's wrapper, which both
    end up in tracebacks, logs and stored error strings."""
    for exc in (context.original_exception, context.sqlalchemy_exception):
        if exc is None or len(exc.args) != 1 or not isinstance(exc.args[0], str):
            continue
        hidden = _SERVER_DETAIL.sub(_DETAIL_HIDDEN, exc.args[0])
        if hidden != exc.args[0]:
            exc.args = (hidden,)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session
