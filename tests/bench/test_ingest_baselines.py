"""The HTTP ingest benchmark's baseline writes again, by ``executemany``, the rows the product
stored for the measured events: it must leave the database exactly as the product left it, every
table and every row, or the ratio it gives compares the product with something else."""

from __future__ import annotations

from datetime import datetime

import psycopg
import pytest
from sqlalchemy import make_url

from bench.ingest_common import (
    HISTORY,
    executemany_stored_rows_seconds,
    id_marks,
    libpq_url,
    reset_with_history,
    rows_since,
)
from bench.ingest_http import deliveries
from bench.ingest_profile import shop_events
from config import load_config
from ingest.service import ingest_batch
from models import Base
from models.session import make_engine, make_session_factory
from tests.conftest import service_url


@pytest.fixture
def bench_url() -> str:
    """A database of its own on the test server: a benchmark rebuilds its schema."""
    url = make_url(service_url("NPS_TEST_POSTGRES_URL", "PostgreSQL"))
    return url.set(database=f"{url.database}_bench_rows").render_as_string(hide_password=False)


def _store(url: str, purchases: int, now: datetime) -> None:
    engine = make_engine(url)
    try:
        events = shop_events(purchases, prefix="m", at=now) + deliveries(purchases, "m", now)
        results = ingest_batch(make_session_factory(engine), events, load_config(None), now)
        assert {r.status for r in results} == {"accepted"}
    finally:
        engine.dispose()


def _everything(url: str) -> dict[str, list[tuple[str | None, ...]]]:
    """Every row of every table of the product, each column as text, sorted."""
    contents: dict[str, list[tuple[str | None, ...]]] = {}
    with psycopg.connect(libpq_url(url)) as conn:
        for table in Base.metadata.sorted_tables:
            columns = ", ".join(f'"{c.name}"::text' for c in table.c)
            rows = conn.execute(f"SELECT {columns} FROM {table.name}").fetchall()
            contents[table.name] = sorted(rows, key=repr)
    return contents


def _sequences_behind_rows(url: str) -> list[str]:
    """The tables whose id sequence would hand out an id already stored."""
    behind = []
    with psycopg.connect(libpq_url(url)) as conn:
        for table in Base.metadata.sorted_tables:
            if "id" in table.c:
                row = conn.execute(
                    f"SELECT (SELECT last_value FROM {table.name}_id_seq)"
                    f" < coalesce(max(id), 0) FROM {table.name}"
                ).fetchone()
                if row and row[0]:
                    behind.append(table.name)
    return behind


def test_the_baseline_writes_again_exactly_the_rows_the_product_stored(
    bench_url, now, frozen_clock
):
    # The wall clock held, so that the stamps the history's rows get are the same both times.
    history = shop_events(12, prefix=HISTORY, at=now)
    reset_with_history(bench_url, history, now)
    marks = id_marks(bench_url)
    _store(bench_url, 9, now)
    stored = rows_since(bench_url, marks)
    # Each purchase's customer, order, survey and consents, each delivery's transition, and
    # every event's id: nothing the product stores is left out of the baseline.
    counts = {table: len(rows) for table, (_, rows) in stored.items()}
    assert counts["customers"] == counts["orders"] == counts["surveys"] == 9
    assert counts["survey_transitions"] == 9
    assert counts["inbound_events"] == 18
    assert counts["consent_records"] > 0

    after_the_product = _everything(bench_url)

    reset_with_history(bench_url, history, now)
    assert all(not rows for _, rows in rows_since(bench_url, marks).values())
    seconds = executemany_stored_rows_seconds(bench_url, stored, clients=2, chunk=4)
    assert seconds > 0
    assert _everything(bench_url) == after_the_product
    assert _sequences_behind_rows(bench_url) == []
