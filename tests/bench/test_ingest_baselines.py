"""The HTTP ingest benchmark's baseline writes again, by ``executemany``, the rows the product
stored for the measured events: it must leave the database exactly as the product left it, every
table and every row, or the ratio it gives compares the product with something else."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

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


def _store(url: str, purchases: int, now: datetime, prefix: str = "m") -> None:
    engine = make_engine(url)
    try:
        events = shop_events(purchases, prefix=prefix, at=now) + deliveries(purchases, prefix, now)
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


class _WriteTimes:
    """The wall time each thread spends in ``executemany``: a baseline's measured time must
    cover every one of its writes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.by_thread: dict[int, float] = defaultdict(float)
        original = psycopg.Cursor.executemany

        def timed(cursor: Any, *args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            try:
                original(cursor, *args, **kwargs)
            finally:
                self.by_thread[threading.get_ident()] += time.perf_counter() - start

        monkeypatch.setattr(psycopg.Cursor, "executemany", timed)


def test_the_baseline_writes_again_exactly_the_rows_the_product_stored(
    bench_url, now, frozen_clock, monkeypatch
):
    # The wall clock held, so that the stamps the history's rows get are the same both times.
    # A history of 95 purchases: the new customers' ids cross from two digits to three, where
    # an order by their text would differ from their order.
    history = shop_events(95, prefix=HISTORY, at=now)
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
    # In the order they were stored, as the product wrote them into the indexes.
    for table, (_, rows) in stored.items():
        ids = [int(row[0] or 0) for row in rows]
        assert ids == sorted(set(ids)), table

    after_the_product = _everything(bench_url)

    reset_with_history(bench_url, history, now)
    assert all(not rows for _, rows in rows_since(bench_url, marks).values())
    writes = _WriteTimes(monkeypatch)
    seconds = executemany_stored_rows_seconds(bench_url, stored, clients=2, chunk=4)
    assert len(writes.by_thread) == 2
    assert seconds >= max(writes.by_thread.values())
    assert _everything(bench_url) == after_the_product
    # The sequences stand past the rows written: the product stores its next rows as usual.
    _store(bench_url, 2, now, prefix="next")
