"""Where a benchmark keeps its data: its own database on the test PostgreSQL server, never the
test database, created when missing."""

from __future__ import annotations

import os
import sys

from sqlalchemy import make_url, text

from models.session import make_engine


def bench_url(database: str) -> str:
    """``NPS_BENCH_POSTGRES_URL`` as given, else ``database`` on the server of
    ``NPS_TEST_POSTGRES_URL``."""
    explicit = os.environ.get("NPS_BENCH_POSTGRES_URL")
    if explicit:
        return explicit
    base = os.environ.get("NPS_TEST_POSTGRES_URL")
    if not base:
        sys.exit("set NPS_BENCH_POSTGRES_URL or NPS_TEST_POSTGRES_URL (e.g. `make bench`)")
    return make_url(base).set(database=database).render_as_string(hide_password=False)


def ensure_database(url: str) -> None:
    """CREATE DATABASE when missing, from an autocommit connection to the same server."""
    target = make_url(url)
    name = target.database
    if not name:
        sys.exit(f"no database name in {target.render_as_string(hide_password=True)}")
    admin = make_engine(
        target.set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).scalar()
            if not exists:
                quoted = admin.dialect.identifier_preparer.quote(name)
                conn.execute(text(f"CREATE DATABASE {quoted}"))
    finally:
        admin.dispose()
