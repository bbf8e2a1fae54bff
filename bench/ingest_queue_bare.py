"""The bare baseline of ``bench.ingest_queue``: a dramatiq actor that inserts one row and commits.

Run by ``dramatiq bench.ingest_queue_bare`` with ``NPS_BROKER_URL`` (Redis) and
``NPS_BENCH_LIBPQ_URL`` (the benchmark database) set. Each thread takes a psycopg connection
from a pool of at most ``NPS_BENCH_BARE_CONNECTIONS`` per process (default 8, the worker's
default thread count), opened on first use and kept: with more threads than that, one
connection per thread would exceed the server's connection limit, and more connections than
cores add no commits per second.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
import psycopg
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["NPS_BROKER_URL"])
dramatiq.set_broker(broker)

_LIMIT = int(os.environ.get("NPS_BENCH_BARE_CONNECTIONS", "8"))
# Each slot holds a connection, or None until a thread first needs it.
_slots: queue.LifoQueue[psycopg.Connection[Any] | None] = queue.LifoQueue()
for _ in range(_LIMIT):
    _slots.put(None)


@contextmanager
def connection() -> Iterator[psycopg.Connection[Any]]:
    conn = _slots.get()
    try:
        if conn is None:
            conn = psycopg.connect(os.environ["NPS_BENCH_LIBPQ_URL"])
        yield conn
    finally:
        _slots.put(conn)


INSERT = "INSERT INTO bare_events VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"


def row(event: dict[str, Any]) -> tuple[Any, ...]:
    """The bare table's row for an event."""
    customer = event.get("customer") or {}
    return (
        event["event_id"],
        event["type"],
        event.get("order_id"),
        customer.get("id"),
        customer.get("email"),
        customer.get("phone"),
        (event.get("total") or {}).get("amount"),
        event["occurred_at"],
    )


@dramatiq.actor(queue_name="bare", max_retries=0)
def bare_insert(event: dict[str, Any]) -> None:
    with connection() as conn:
        conn.execute(INSERT, row(event))
        conn.commit()
