"""Engines and sessions for SQLite (embedded default) and PostgreSQL (production).

A PostgreSQL engine keeps a pool as large as the threads that use it at once (a dramatiq worker
process runs 8 for every queue, plus the events queue's own, of which few hold a connection at
once; uvicorn's thread pool more), so that no thread waits for a connection and no
connection is opened and closed per message: :data:`POOL_SIZE` kept open plus
:data:`MAX_OVERFLOW` for peaks. Connections are not pinged on every checkout (a round trip per
transaction); they are replaced after :data:`POOL_RECYCLE_SECONDS` instead, and a connection the
server closed meanwhile fails its first statement, which invalidates the pool's older
connections: :func:`retry_on_disconnect` runs such a unit of work once more on a new one.

Every engine keeps the data it writes out of its error messages and its log: bound parameters
are hidden (``hide_parameters``), and so is the DETAIL line PostgreSQL adds to a constraint
violation, which quotes the failing row or key ("Failing row contains (..., ana@example.com,
...)"). The driver keeps that detail for code that needs it (``exc.orig.diag.message_detail``).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

from psycopg.types.array import ListBinaryDumper
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

# The server's DETAIL and CONTEXT lines (values of the row, key or input at fault).
_SERVER_DETAIL = re.compile(r"^(DETAIL|CONTEXT):.*$", re.MULTILINE)
_DETAIL_HIDDEN = r"\1:  (hidden: it may quote row values)"

#: PostgreSQL's "deadlock detected" and "serialization failure": the transaction was rolled
#: back whole, and the same work can succeed when run again.
TRANSIENT_SQLSTATES: Final = frozenset({"40P01", "40001"})

#: Connections a PostgreSQL engine keeps open: dramatiq's 8 threads per worker process, and a
#: margin for the process's other threads (the config watcher, a web process's thread pool).
#: The events queue's own threads (``worker.event_threads``) take few: single events are
#: applied by one group's leader at a time (two when one stalls), and batches at most
#: ``worker.actors.BATCHES_AT_ONCE`` (8) at once, so ordinary work needs about 18, within
#: POOL_SIZE + MAX_OVERFLOW. A burst of refused single events, each stored as a dead letter by
#: its own thread in a short transaction, can ask for more at once: those wait their turn.
POOL_SIZE = 16
#: Opened beyond :data:`POOL_SIZE` at a peak, closed again when returned.
MAX_OVERFLOW = 16
#: A connection older than this is replaced at checkout (before a server or proxy idle limit).
POOL_RECYCLE_SECONDS = 1800

T = TypeVar("T")


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
        if "poolclass" not in kwargs:
            kwargs.setdefault("pool_size", POOL_SIZE)
            kwargs.setdefault("max_overflow", MAX_OVERFLOW)
            # The connection used last is handed out first: after a server restart the first
            # checkout meets a dead connection, whose failure replaces every older one.
            kwargs.setdefault("pool_use_lifo", True)
        kwargs.setdefault("pool_recycle", POOL_RECYCLE_SECONDS)
        kwargs.setdefault("pool_pre_ping", False)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _binary_arrays)
    event.listen(engine, "handle_error", _hide_server_detail)
    event.listen(engine, "handle_error", _server_ended_session_is_disconnect)
    return engine


#: SQLSTATE classes that mean the server ended the session or cannot serve it: connection
#: exceptions (08) and an operator or crash shutdown (57P01-57P03).
_SESSION_ENDED = ("08", "57P01", "57P02", "57P03")


def _server_ended_session_is_disconnect(context: ExceptionContext) -> None:
    """A session the server ended (a restart, ``pg_terminate_backend``) is a lost connection,
    even when the driver read the server's last error before noticing the closed socket: the
    pool then replaces every connection opened before it instead of handing them out again."""
    state = getattr(context.original_exception, "sqlstate", None)
    if isinstance(state, str) and state.startswith(_SESSION_ENDED):
        context.is_disconnect = True


def _hide_server_detail(context: ExceptionContext) -> None:
    """Rewrite the message of the driver's exception and of SQLAlchemy's wrapper, which both
    end up in tracebacks, logs and stored error strings."""
    for exc in (context.original_exception, context.sqlalchemy_exception):
        if exc is None or len(exc.args) != 1 or not isinstance(exc.args[0], str):
            continue
        hidden = _SERVER_DETAIL.sub(_DETAIL_HIDDEN, exc.args[0])
        if hidden != exc.args[0]:
            exc.args = (hidden,)


def _binary_arrays(dbapi_connection: Any, _record: Any) -> None:
    """Send Python lists as binary arrays. psycopg picks its text array format by default, which
    quotes and escapes every element in Python: for the column arrays of a bulk statement
    (``models.bulk``) that was the largest single cost of ingest, and a binary array of
    timestamps dumps about twenty times faster.

    The type of a binary array travels with it (``text[]`` for strings, ``smallint[]`` to
    ``numeric[]`` for integers by their size), where a text array was left for the server to
    infer. Every array parameter of this code base is therefore cast where it is used:
    SQLAlchemy renders ``::TYPE[]`` for an ``ARRAY``-typed parameter, and the hand-written
    statements say ``CAST(:x AS bigint[])``. A new statement binding a list must cast it too:
    ``bigint = ANY(text[])`` has no operator."""
    dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)


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


def engine_of(factory: sessionmaker[Session]) -> Engine:
    """The engine the sessions of ``factory`` run on."""
    bind = factory.kw.get("bind")
    if isinstance(bind, Engine):
        return bind
    with factory() as session:
        engine = session.get_bind()
    if not isinstance(engine, Engine):
        raise TypeError("the sessions are not bound to an engine")
    return engine


def single_statement(engine: Engine) -> Connection:
    """A connection for one statement that is its own transaction: on PostgreSQL without
    ``BEGIN`` and ``COMMIT`` round trips (autocommit; the statement is atomic and durable when
    it returns). On SQLite it is an ordinary connection, in its explicit transactions (see
    ``_sqlite_pragmas``): there the caller commits what it writes.

    A Core connection rather than a session: opening and closing an ORM session around a
    single statement cost about a quarter of that statement's client CPU (measured on the send
    path), and such a statement loads no objects."""
    if engine.dialect.name == "postgresql":
        return engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    return engine.connect()


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


def retry_on_disconnect(work: Callable[[], T], *, attempts: int = 2) -> T:
    """Run ``work`` (a whole transaction), once more when it failed because its connection was
    gone (the server restarted, or closed an idle connection): the failed transaction was rolled
    back with its connection, and the pool hands out a new one. Only for work that may safely
    run twice (a compare-and-set, an insert guarded by its own check)."""
    attempt = 1
    while True:
        try:
            return work()
        except DBAPIError as exc:
            if not exc.connection_invalidated or attempt >= attempts:
                raise
        attempt += 1


def transient(exc: BaseException) -> bool:
    """A deadlock or serialisation failure: the same work can succeed when tried again."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in TRANSIENT_SQLSTATES


def retry_transient(work: Callable[[], T], *, attempts: int = 3) -> T:
    """Run ``work`` (a whole transaction) again when it failed on a dead connection
    (:func:`retry_on_disconnect`), a deadlock or a serialisation failure: each left nothing
    of it committed, except a commit whose answer was lost with its connection. So, as for
    :func:`retry_on_disconnect`, only for work that may safely run twice. Between attempts, a
    short random pause lets the other transaction of a deadlock finish first."""
    attempt = 1
    while True:
        try:
            return work()
        except DBAPIError as exc:
            if not (exc.connection_invalidated or transient(exc)) or attempt >= attempts:
                raise
            # The error's kind only: its message may quote the statement's values.
            cause = getattr(exc.orig, "sqlstate", None) or "connection lost"
            log.warning("transaction run again after a transient failure (%s)", cause)
        time.sleep(random.uniform(0.02, 0.1) * attempt)  # noqa: S311 - jitter only
        attempt += 1
