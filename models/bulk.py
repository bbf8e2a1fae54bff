"""Statements over many rows at once: insert, update and ``IN`` with one statement per call.

On PostgreSQL the rows travel as one array per column and the statement reads them back with
``unnest``: one statement executed once, whatever the number of rows. An ``executemany`` would
run the statement once per row on the server (pipelined, but parsed, planned and executed N
times), and an ``IN (...)`` of N values binds N parameters that the driver rewrites into the
query text on every call. On SQLite, which runs in process, the plain forms are already cheap
and are kept: ``executemany`` and ``IN``.

Values go through each column's own type on the way in (``UtcDateTime`` refuses naive
datetimes and normalises to UTC here as everywhere else).

The PostgreSQL statements are built and compiled once per table and set of columns and kept
(``models.prepared``): the rows are parameters, so each call only binds them and sends the
same SQL text, instead of SQLAlchemy walking a new statement tree or its execution context on
every call (most of the CPU of a small batch otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Connection,
    Executable,
    Insert,
    String,
    Table,
    Text,
    Unicode,
    any_,
    bindparam,
    cast,
    column,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Result
from sqlalchemy.orm import Session

from models.prepared import Executor, run_kept

__all__ = ["Executor", "Match", "insert_rows", "is_any", "select_any", "update_rows"]


def _postgresql(executor: Executor) -> bool:
    bind = executor if isinstance(executor, Connection) else executor.get_bind()
    return bind.dialect.name == "postgresql"


def _as_text(kind: Any) -> Any:
    if type(kind) in (String, Unicode) and kind.length is not None:
        # As text, not as the column's VARCHAR(n): an explicit cast to VARCHAR(n) cuts an
        # over-long value silently, where storing text in the column refuses it.
        return Text()
    return kind


def _array_values(table: Table, name: str, values: list[Any]) -> list[Any]:
    kind = table.c[name].type
    if isinstance(kind, JSON):
        # None is stored as SQL NULL only where the column says so (``none_as_null``), as a
        # single-row insert does.
        return [
            None if value is None and kind.none_as_null else json.dumps(value) for value in values
        ]
    return values


def _unnest(table: Table, names: Sequence[str]) -> Any:
    """``unnest`` of one array parameter per column, ``col_0`` ... in the order of ``names``."""
    arrays = []
    for i, name in enumerate(names):
        kind = table.c[name].type
        if isinstance(kind, JSON):
            # JSON documents travel as text and are cast on the server: a list value would
            # otherwise be read as one more dimension of the array.
            sent: Any = ARRAY(Text())
            wanted: Any = ARRAY(JSON())
        else:
            sent = wanted = ARRAY(_as_text(kind))
        arrays.append(cast(bindparam(f"col_{i}", type_=sent), wanted))
    return func.unnest(*arrays)


def _arrays(
    table: Table, names: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> dict[str, list[Any]]:
    return {
        f"col_{i}": _array_values(table, name, [row[name] for row in rows])
        for i, name in enumerate(names)
    }


def insert_rows(
    executor: Executor,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    ignoring: Sequence[str] = (),
    returning: Iterable[Any] = (),
) -> Result[Any] | None:
    """Insert ``rows`` (every row with the same keys) in one statement; with ``ignoring``,
    ``ON CONFLICT (ignoring) DO NOTHING`` (a concurrent insert of the same key waits for that
    transaction, then inserts nothing). Returns the result when ``returning`` names columns,
    holding one row per row inserted; None when there is nothing to insert."""
    if not rows:
        return None
    columns = rows[0].keys()
    if any(row.keys() != columns for row in rows):
        # The statement's columns are the first row's: another key would be dropped silently.
        raise ValueError(f"rows for {table.name} do not all have the same columns")
    wanted = list(returning)
    statement: Insert
    if _postgresql(executor):
        names = list(columns)

        def build() -> Insert:
            source: Any = select(literal_column("*")).select_from(_unnest(table, names))
            pg = postgresql_insert(table).from_select(names, source)
            built = pg.on_conflict_do_nothing(index_elements=list(ignoring)) if ignoring else pg
            return built.returning(*wanted) if wanted else built

        arrays = _arrays(table, names, rows)
        if all(isinstance(c, Column) and c.table is table for c in wanted):
            key = ("insert", table, tuple(names), tuple(ignoring), tuple(c.key for c in wanted))
            return run_kept(executor, key, build, arrays)
        return executor.execute(build(), arrays)
    lite = sqlite_insert(table)
    statement = lite.on_conflict_do_nothing(index_elements=list(ignoring)) if ignoring else lite
    if wanted:
        statement = statement.returning(*wanted)
    return executor.execute(statement, list(rows))


def update_rows(
    session: Session,
    table: Table,
    fields: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    *only_when: ColumnElement[bool],
) -> int:
    """``UPDATE table SET fields WHERE id = row["id"] AND only_when`` for every row, in one
    statement; returns how many rows it updated. The order in which PostgreSQL locks the rows
    of one statement is the plan's: where two transactions may update the same rows, lock them
    first in a stable order (as ingest does with ``SELECT ... ORDER BY ... FOR UPDATE``)."""
    if not rows:
        return 0
    ordered = sorted(rows, key=lambda row: int(row["id"]))
    if _postgresql(session):
        names = ["id", *fields]

        def build() -> Any:
            given = (
                _unnest(table, names)
                .table_valued(*(column(name) for name in names))
                .render_derived(name="given")
            )
            return (
                update(table)
                .where(table.c.id == given.c.id, *only_when)
                .values({name: given.c[name] for name in fields})
            )

        arrays = _arrays(table, names, ordered)
        if only_when:
            # A condition is built anew by each caller: only the plain statement is kept.
            return _rowcount(session.execute(build(), arrays))
        return _rowcount(run_kept(session, ("update", table, tuple(fields)), build, arrays))
    statement = (
        update(table)
        .where(table.c.id == bindparam("row_id", type_=table.c.id.type), *only_when)
        .values({name: bindparam(f"v_{name}", type_=table.c[name].type) for name in fields})
    )
    return _rowcount(
        session.execute(
            statement,
            [
                {"row_id": row["id"], **{f"v_{name}": row[name] for name in fields}}
                for row in ordered
            ],
        )
    )


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE changed (summed over an ``executemany`` on SQLite)."""
    count = getattr(result, "rowcount", None)
    if count is None or count < 0:
        raise RuntimeError("the driver did not report how many rows the UPDATE changed")
    return int(count)


def is_any(session: Session, target: ColumnElement[Any], values: Sequence[Any]) -> Any:
    """``target IN values``: on PostgreSQL ``target = ANY(array)``, one parameter however many
    values (and no limit on their number)."""
    if _postgresql(session):
        return target == any_(bindparam(None, list(values), type_=ARRAY(_as_text(target.type))))
    return target.in_(list(values))


Match = Callable[[ColumnElement[Any]], ColumnElement[bool]]


def select_any(
    executor: Executor,
    key: Hashable,
    build: Callable[[Match], Executable],
    values: Sequence[Any],
) -> Result[Any]:
    """Run the statement ``build(match)``, where ``match(column)`` is ``column IN values``.

    On PostgreSQL the statement is kept under ``key`` (``models.prepared``), ``column =
    ANY(array)`` with the values as one parameter; on SQLite it is built on each call."""
    params = {"values": list(values)}
    if _postgresql(executor):

        def any_of(target: ColumnElement[Any]) -> ColumnElement[bool]:
            kind = ARRAY(_as_text(target.type))
            return target == any_(bindparam("values", type_=kind))

        return run_kept(executor, key, lambda: build(any_of), params)

    def in_(target: ColumnElement[Any]) -> ColumnElement[bool]:
        return target.in_(bindparam("values", expanding=True))

    return executor.execute(build(in_), params)
