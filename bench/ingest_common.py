"""What the ingest benchmarks share: the benchmark database, the bare ``executemany`` baseline,
the processes' environment and CPU accounting.

The database is ``nps_bench_ingest`` on the test server (``NPS_BENCH_POSTGRES_URL`` overrides the
whole URL); its schema is rebuilt with the real migrations before each measurement.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import make_url, text

from bench import databases
from bench.databases import ensure_database
from migrations.runner import upgrade
from models.session import make_engine

_TICK = os.sysconf("SC_CLK_TCK")
SECRET_KEY = "bench-secret"
#: The event ids' prefix of the history stored before a measurement (``reset_with_history``).
HISTORY = "seed"


def bench_url() -> str:
    return databases.bench_url("nps_bench_ingest")


def libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def reset_schema(url: str) -> None:
    ensure_database(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    upgrade(engine)
    engine.dispose()


def reset_with_history(url: str, events: list[dict[str, Any]], at: datetime) -> None:
    """A fresh schema (:func:`reset_schema`) holding ``events`` (a shop's history, purchases of
    other customers than the measured ones), stored through the product's set-based ingest,
    then ``ANALYZE``: the measured run meets tables as a running shop's database holds them.

    On tables just created, a connection's prepared statements get their generic plans (from
    the sixth execution on) while the tables hold a few rows: sequential scans, kept until the
    next ``ANALYZE`` invalidates them. Autovacuum runs it about once a minute in production; a
    run of seconds on a fresh schema would measure those scans, growing with every row."""
    from config import load_config
    from ingest.service import ingest_batch
    from models import privacy
    from models.privacy import Pseudonymiser
    from models.session import make_session_factory

    reset_schema(url)
    if not events:
        return
    privacy.install(Pseudonymiser(SECRET_KEY))
    engine = make_engine(url)
    try:
        factory, config = make_session_factory(engine), load_config(None)
        for start in range(0, len(events), 500):
            results = ingest_batch(factory, events[start : start + 500], config, at)
            if any(r.status != "accepted" for r in results):
                raise RuntimeError(f"seed event not accepted: {results[0].to_dict()}")
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    finally:
        engine.dispose()


def bare_rows(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The fields of each event as one row of a bare table."""
    return [
        (
            e["event_id"],
            e["type"],
            e.get("order_id"),
            (e.get("customer") or {}).get("id"),
            (e.get("customer") or {}).get("email"),
            (e.get("customer") or {}).get("phone"),
            (e.get("total") or {}).get("amount"),
            e["occurred_at"],
        )
        for e in events
    ]


def create_bare_table(conn: psycopg.Connection[Any], history: list[dict[str, Any]]) -> None:
    """The bare baseline's table, holding the rows of ``history`` (then analysed)."""
    conn.execute("DROP TABLE IF EXISTS bare_events")
    conn.execute(
        "CREATE TABLE bare_events (event_id text PRIMARY KEY, type text, order_id text, "
        "customer_id text, email text, phone text, amount numeric, occurred_at timestamptz)"
    )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO bare_events VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", bare_rows(history)
        )
    conn.commit()
    conn.execute("ANALYZE bare_events")
    conn.commit()


def executemany_rows_per_s(
    url: str, events: list[dict[str, Any]], history: list[dict[str, Any]], chunk: int = 1000
) -> float:
    """The bare baseline: psycopg ``executemany`` of the same rows into a bare table holding
    the rows of ``history``, one commit per ``chunk`` rows."""
    rows = bare_rows(events)
    with psycopg.connect(libpq_url(url)) as conn:
        create_bare_table(conn, history)
        start = time.perf_counter()
        with conn.cursor() as cur:
            for at in range(0, len(rows), chunk):
                cur.executemany(
                    "INSERT INTO bare_events VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    rows[at : at + chunk],
                )
                conn.commit()
        elapsed = time.perf_counter() - start
        conn.execute("DROP TABLE bare_events")
    return len(rows) / elapsed


def id_marks(url: str) -> dict[str, int]:
    """The highest ``id`` of each of the product's tables keyed by one, parents before children
    (their foreign keys): the rows above it are written later."""
    from models import Base

    tables = [t.name for t in Base.metadata.sorted_tables if "id" in t.c]
    marks: dict[str, int] = {}
    with psycopg.connect(libpq_url(url)) as conn:
        for table in tables:
            row = conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()
            marks[table] = int(row[0]) if row else 0
    return marks


StoredRows = dict[str, tuple[list[str], list[tuple[str | None, ...]]]]


def rows_since(url: str, marks: dict[str, int]) -> StoredRows:
    """The rows written after :func:`id_marks` took ``marks``, as they are stored now, each
    column as text (PostgreSQL casts it back on insert), per table in ``id`` order."""
    from models import Base

    stored: StoredRows = {}
    with psycopg.connect(libpq_url(url)) as conn:
        for table, mark in marks.items():
            columns = [column.name for column in Base.metadata.tables[table].c]
            select = ", ".join(f'"{c}"::text' for c in columns)
            # Ordered by the stored column: a bare ``id`` would name the text one selected.
            rows = conn.execute(
                f"SELECT {select} FROM {table} WHERE {table}.id > %s ORDER BY {table}.id",
                (mark,),
            ).fetchall()
            stored[table] = (columns, rows)
    return stored


def executemany_stored_rows_seconds(
    url: str, stored: StoredRows, clients: int = 1, chunk: int = 1000
) -> float:
    """The bare baseline of the rows a product run stored: psycopg ``executemany`` of those very
    rows into the product's own tables (their indexes and keys), from ``clients`` connections
    at once, one commit per ``chunk`` rows; a table's rows all in before the next table's
    (parents first). Each row goes in once, as it was last stored: the product's updates of
    its own rows (a delivery moving a survey) are not repeated. The database must be as the
    product run found it; its sequences are moved past the rows written, as the product's
    inserts leave them."""
    connections: list[psycopg.Connection[Any]] = []

    def write(conn: psycopg.Connection[Any], sql: str, chunks: list[Any]) -> None:
        for rows in chunks:
            with conn.cursor() as cur:
                cur.executemany(sql, rows)
            conn.commit()

    try:
        for _ in range(max(1, clients)):
            connections.append(psycopg.connect(libpq_url(url)))
        with ThreadPoolExecutor(len(connections)) as pool:
            start = time.perf_counter()
            for table, (columns, rows) in stored.items():
                names = ", ".join(f'"{c}"' for c in columns)
                sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join('%s' for _ in columns)})"
                chunks = [rows[at : at + chunk] for at in range(0, len(rows), chunk)]
                shares = [chunks[i :: len(connections)] for i in range(len(connections))]
                list(pool.map(write, connections, [sql] * len(shares), shares))
            elapsed = time.perf_counter() - start
        conn = connections[0]
        for table, (_, rows) in stored.items():
            if rows:
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                )
        conn.commit()
        return elapsed
    finally:
        for each in connections:
            each.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def product_env(url: str, workdir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "NPS_DATABASE_URL": url,
        "NPS_CONFIG": str(workdir / "absent.toml"),
        "NPS_SECRET_KEY": SECRET_KEY,
        "NPS_INGEST_TOKEN": "bench-token",
        "NPS_DASHBOARD_PASSWORD": "bench",
        "NPS_LOG_LEVEL": "WARNING",
        **extra,
    }


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants, and of the children each has
    reaped (for a database server: every backend that exited, whoever its client), from /proc."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            # Its own user and system time, and that of its children it has reaped: a child
            # that exits during a measurement (a server's backend) still counts.
            total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICK
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        pending.extend(int(c) for c in children)
    return total


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")
