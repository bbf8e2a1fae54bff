"""Statements compiled once and run as SQL text: the hot statements of set-based ingest.

Executing a statement object through SQLAlchemy costs, every time, a cache-key lookup and an
execution context that walks every bound parameter: about 0.1 ms of CPU per statement on top of
the driver's own work, which doubled the client's cost of a small batch's nine statements (one
group of queued events). A kept statement skips that: it is compiled once for the connection's
dialect, and each call hands the SQL text and its parameters to
:meth:`~sqlalchemy.engine.Connection.exec_driver_sql`. That still runs through the engine, so
its error handling (hidden parameters and server details, lost connections invalidating the
pool; ``models.session``) and its events apply as to any statement.

What the execution context did per call is done here instead, with the same type objects:
each parameter goes through its type's bind processor (``UtcDateTime`` still refuses a naive
datetime), values written into the statement and scalar column defaults are bound once, and
the columns read back go through their types' result processors (aware UTC datetimes, enums),
found from the driver's column types on the first execution.

Only statements whose parameters are all named, with no expanding ``IN`` and no client-side
SQL expression as a column default, can be kept: :func:`run_kept` refuses the others when it
compiles them, so a statement that cannot be kept fails on its first use, not with a wrong
value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Dialect, Executable
from sqlalchemy.engine import Result
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.schema import CallableColumnDefault, ScalarElementColumnDefault

__all__ = ["Executor", "connection_of", "run_kept"]

#: Where a statement runs: a session, or a connection of its own (as the webhook intake uses).
Executor = Session | Connection

Processor = Callable[[Any], Any]


@dataclass(slots=True)
class _Kept:
    sql: str
    #: The parameters callers give, by name, each with its type's bind processor.
    given: dict[str, tuple[str, Processor | None]]
    #: The values written into the statement and the scalar column defaults, processed once.
    fixed: dict[str, Any]
    #: The column defaults computed by a function, once per execution (as SQLAlchemy does for
    #: an ``INSERT ... SELECT``).
    computed: dict[str, tuple[Callable[[Any], Any], Processor | None]]
    columns: Sequence[Any]
    #: The result processors of the columns read back, set on the first execution (``None``
    #: when no column needs one).
    loaders: list[Processor | None] | None = None
    loaded: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


_kept: dict[Hashable, _Kept] = {}
_kept_lock = threading.Lock()


def connection_of(executor: Executor) -> Connection:
    """The connection a statement of ``executor`` runs on. A session first flushes pending ORM
    changes, as its own ``execute`` does when autoflush is on."""
    if isinstance(executor, Connection):
        return executor
    if executor.autoflush:
        executor.flush()
    return executor.connection()


def _compile(statement: Executable, dialect: Dialect) -> _Kept:
    assert isinstance(statement, ClauseElement)
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    sql = compiled.string
    if "POSTCOMPILE" in sql or compiled.positional:
        raise ValueError("a kept statement needs named parameters and no expanding IN")
    escaped = compiled.escaped_bind_names
    # The columns an INSERT or UPDATE leaves to their Python-side default or onupdate, which
    # the compiler renders as parameters for the execution to fill.
    defaults = {c.key: c.default for c in compiled.insert_prefetch}
    defaults.update({c.key: c.onupdate for c in compiled.update_prefetch})
    given: dict[str, tuple[str, Processor | None]] = {}
    fixed: dict[str, Any] = {}
    computed: dict[str, tuple[Callable[[Any], Any], Processor | None]] = {}
    for name, bind in compiled.binds.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        key = escaped.get(name, name)
        if name in defaults:
            default = defaults[name]
            if not isinstance(default, (ScalarElementColumnDefault, CallableColumnDefault)):
                raise ValueError(f"{name}: a kept statement cannot compute this default")
            if default.is_callable:
                computed[key] = (default.arg, processor)
                continue
            value = default.arg
        elif bind.required:
            given[name] = (key, processor)
            continue
        else:
            value = bind.effective_value
        fixed[key] = value if processor is None else processor(value)
    columns = list(getattr(statement, "exported_columns", ()))
    return _Kept(sql, given, fixed, computed, columns)


def _loaders(kept: _Kept, result: Any, dialect: Dialect) -> list[Processor | None] | None:
    description = result.cursor.description if result.cursor is not None else None
    if not description or not kept.columns:
        return None
    loaders = [
        column.type.dialect_impl(dialect).result_processor(dialect, entry[1])
        for column, entry in zip(kept.columns, description, strict=True)
    ]
    return loaders if any(loaders) else None


def run_kept(
    executor: Executor,
    key: Hashable,
    build: Callable[[], Executable],
    params: Mapping[str, Any],
) -> Result[Any]:
    """Run the statement ``build`` returns, kept under ``key`` (built and compiled on the first
    call), with ``params``: one value for each parameter the statement leaves open."""
    conn = connection_of(executor)
    # The SQL text is the dialect's (and its driver's): a process may hold engines of both.
    where = (type(conn.dialect), key)
    kept = _kept.get(where)
    if kept is None:
        with _kept_lock:
            kept = _kept.get(where)
            if kept is None:
                kept = _kept[where] = _compile(build(), conn.dialect)
    values = dict(kept.fixed)
    try:
        for sent, (compute, processor) in kept.computed.items():
            value = compute(None)  # SQLAlchemy's wrapper of a default that takes no context
            values[sent] = value if processor is None else processor(value)
        for name, (sent, processor) in kept.given.items():
            value = params[name]
            values[sent] = value if processor is None else processor(value)
    except KeyError as exc:
        message = f"missing parameter {exc.args[0]!r}"
        raise StatementError(message, kept.sql, None, exc, hide_parameters=True) from exc
    except (TypeError, ValueError) as exc:
        # As SQLAlchemy reports a value its type refuses; the parameters stay out of it.
        name = f"{type(exc).__module__}.{type(exc).__name__}"
        raise StatementError(f"({name}) {exc}", kept.sql, None, exc, hide_parameters=True) from exc
    result = conn.exec_driver_sql(kept.sql, values)
    if not kept.loaded:
        with kept.lock:
            kept.loaders = _loaders(kept, result, conn.dialect)
            kept.loaded = True
    if kept.loaders is None:
        return result
    loaders = kept.loaders
    rows = [
        tuple(
            value if load is None or value is None else load(value)
            for load, value in zip(loaders, row, strict=True)
        )
        for row in result.all()
    ]
    metadata = SimpleResultMetaData([column.key for column in kept.columns])
    return IteratorResult(metadata, iter(rows))
