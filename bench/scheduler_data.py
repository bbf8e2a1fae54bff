"""The scheduler benchmark's data: its database, the seeded pending surveys, and the rows it
makes due for each run (see :mod:`bench.scheduler`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from datetime import datetime
from datetime import time as clock_time

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from config import OperatorConfig, load_config
from config.schedule import QuietHours
from migrations.runner import upgrade

SEED_SQL = """
INSERT INTO customers (id, external_id, email, email_status, phone_status, timezone,
                       created_at, updated_at)
SELECT g, 'bench-c-' || g, 'c' || g || '@example.test', 'valid', 'missing', 'Europe/Berlin',
       now(), now()
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g;
INSERT INTO consent_records (customer_id, channel, granted, captured_at, recorded_at,
                             evidence_kind)
SELECT g, 'email', true, now() - interval '30 days', now() - interval '30 days', 'event'
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g;
INSERT INTO orders (id, external_id, customer_id, purchased_at, delivered_at, total_amount,
                    currency, category, sales_channel, country, previous_orders, is_test,
                    created_at)
SELECT g, 'bench-o-' || g, g, now() - interval '3 days', now() - interval '1 day', 50, 'EUR',
       'books', 'web', 'DE', 0, false, now()
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g;
INSERT INTO surveys (id, order_id, customer_id, channel, state, state_changed_at, planned_at,
                     config_version, anchor_kind, anchor_at, delay_seconds, timezone, due_at,
                     tried_channels, attempts, reminders_sent)
SELECT g, g, g, 'email', CASE WHEN g % 10 = 0 THEN 'waiting_anchor' ELSE 'scheduled' END,
       now(), now(), CAST(:version AS text), 'delivered', now() - interval '1 day', 259200,
       'Europe/Berlin',
       now() + interval '1 day' + (g % 2592000) * interval '1 second', 'email', 0, 0
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g;
"""


def bench_config() -> OperatorConfig:
    """The built-in defaults without quiet hours, on every day: the run may fall at any hour."""
    defaults = load_config(None)
    schedule = defaults.schedule.model_copy(
        update={
            "quiet_hours": QuietHours(start=clock_time(0, 0), end=clock_time(0, 0)),
            "send_days": ("mon", "tue", "wed", "thu", "fri", "sat", "sun"),
        }
    )
    return defaults.model_copy(update={"schedule": schedule})


def rebuild(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    upgrade(engine)


def seed(engine: Engine, lo: int, hi: int, version: str) -> float:
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        for statement in SEED_SQL.split(";"):
            if statement.strip():
                conn.execute(text(statement), {"lo": lo, "hi": hi, "version": version})
    vacuum(engine)
    # Write the seeded pages out now, not while the loops are timed (a role that may not
    # checkpoint has its timings include one).
    autocommit = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    with autocommit as conn, contextlib.suppress(DBAPIError):
        conn.execute(text("CHECKPOINT"))
    return time.perf_counter() - started


def vacuum(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE surveys"))
        conn.execute(text("VACUUM ANALYZE survey_transitions"))


def make_due(engine: Engine, ids: Sequence[int], start: datetime, window: float) -> None:
    """The rows back to ``scheduled``, due evenly over ``window`` seconds from ``start``."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM survey_transitions"))
        conn.execute(
            text(
                "UPDATE surveys SET state = 'scheduled', queued_at = NULL,"
                " due_at = :start + (id - :first) * :step * interval '1 second'"
                " WHERE id BETWEEN :first AND :last"
            ),
            {"start": start, "first": ids[0], "last": ids[-1], "step": window / len(ids)},
        )
    vacuum(engine)


def due_times(engine: Engine, ids: Sequence[int]) -> dict[int, float]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, due_at FROM surveys WHERE id BETWEEN :a AND :b"),
            {"a": ids[0], "b": ids[-1]},
        ).all()
    return {int(i): due.timestamp() for i, due in rows}
