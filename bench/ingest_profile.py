"""Profile of one ingest batch: SQL statements and seconds per event, on SQLite or PostgreSQL.

    python -m bench.ingest_profile [--events 600] [--url URL] [--cprofile]

Ingests ``--events`` purchases of distinct customers (then their fulfilment events) through
:func:`ingest.service.ingest_batch` in chunks of 500, counting the statements sent to the
database with a ``before_cursor_execute`` listener. Without ``--url`` it uses a fresh SQLite
file. With ``--cprofile`` it prints the 25 costliest functions by cumulative time. It prints one
JSON object; nothing asserts on the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, text

from config import load_config
from ingest.service import ingest_batch
from migrations.runner import upgrade
from models import privacy
from models.privacy import Pseudonymiser
from models.session import make_engine, make_session_factory

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def shop_events(n: int, prefix: str = "p", at: datetime = NOW) -> list[dict[str, Any]]:
    """``n`` purchases of distinct customers with consent for both channels."""
    stamp = (at - timedelta(minutes=5)).isoformat()
    return [
        {
            "type": "purchase.completed",
            "event_id": f"evt-{prefix}-{i}",
            "occurred_at": stamp,
            "order_id": f"o-{prefix}-{i}",
            "customer": {
                "id": f"c-{prefix}-{i}",
                "email": f"buyer{i}@example.com",
                "phone": f"+4072{i % 10_000_000:07d}",
                "first_name": "Ana",
                "locale": "ro-RO",
                "country": "RO",
                "previous_orders": i % 4,
            },
            "consent": {"email": True, "sms": i % 2 == 0, "source": "checkout"},
            "total": {"amount": f"{20 + i % 300}.90", "currency": "EUR"},
            "items": [{"sku": "S-1", "category": "books", "quantity": 1}],
            "sales_channel": "web",
        }
        for i in range(n)
    ]


def fulfilments(n: int, prefix: str = "p", at: datetime = NOW) -> list[dict[str, Any]]:
    stamp = (at - timedelta(minutes=1)).isoformat()
    return [
        {
            "type": "order.fulfilled",
            "event_id": f"evt-f-{prefix}-{i}",
            "occurred_at": stamp,
            "order_id": f"o-{prefix}-{i}",
        }
        for i in range(n)
    ]


class StatementCounter:
    """Counts the statements an engine sends (an executemany counts once)."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        self.count += 1


def fresh_engine(url: str | None, workdir: Path) -> Engine:
    if url is None:
        engine = make_engine(f"sqlite:///{workdir / 'profile.db'}")
    else:
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    upgrade(engine)
    return engine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--url", default=None)
    parser.add_argument("--cprofile", action="store_true")
    args = parser.parse_args()
    privacy.install(Pseudonymiser("bench-secret"))
    config = load_config(None)
    with tempfile.TemporaryDirectory() as workdir:
        engine = fresh_engine(args.url, Path(workdir))
        factory = make_session_factory(engine)
        counter = StatementCounter(engine)
        figures: dict[str, Any] = {"backend": engine.dialect.name, "events": args.events}
        profiler = cProfile.Profile() if args.cprofile else None
        for name, events in (
            ("purchases", shop_events(args.events)),
            ("fulfilments", fulfilments(args.events)),
        ):
            counter.count = 0
            start = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            for at in range(0, len(events), 500):
                results = ingest_batch(factory, events[at : at + 500], config, NOW)
                assert all(r.status == "accepted" for r in results), results[0]
            if profiler is not None:
                profiler.disable()
            elapsed = time.perf_counter() - start
            figures[name] = {
                "statements_per_event": round(counter.count / len(events), 3),
                "events_per_s": round(len(events) / elapsed, 1),
            }
        print(json.dumps(figures))
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        engine.dispose()


if __name__ == "__main__":
    main()
