"""The bare baseline of ``bench.ingest_queue``: a dramatiq actor that inserts one row and commits.

Run by ``dramatiq bench.ingest_queue_bare`` with ``NPS_BROKER_URL`` (Redis) and
``NPS_BENCH_LIBPQ_URL`` (the benchmark database) set; one psycopg connection per thread.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import dramatiq
import psycopg
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["NPS_BROKER_URL"])
dramatiq.set_broker(broker)
_local = threading.local()


def _connection() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None:
        conn = psycopg.connect(os.environ["NPS_BENCH_LIBPQ_URL"])
        _local.conn = conn
    return conn


@dramatiq.actor(queue_name="bare", max_retries=0)
def bare_insert(event: dict[str, Any]) -> None:
    conn = _connection()
    customer = event.get("customer") or {}
    conn.execute(
        "INSERT INTO bare_events VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            event["event_id"],
            event["type"],
            event.get("order_id"),
            customer.get("id"),
            customer.get("email"),
            customer.get("phone"),
            (event.get("total") or {}).get("amount"),
            event["occurred_at"],
        ),
    )
    conn.commit()
