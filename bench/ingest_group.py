"""Benchmark: the client's CPU for one group of queued events, in one thread.

    python -m bench.ingest_group [--groups 1500] [--size 7] [--history 20000]

What the queue worker pays per group of single events (``ingest.grouped``), measured without
dramatiq, Redis or other threads: the process CPU time (``time.process_time``) of
``ingest_batch`` applying ``--groups`` groups of ``--size`` new purchases one after the other,
each in its own transaction, against the database of ``bench.ingest_queue`` (the same history).
The bare baseline, in the same run: the same events as rows of the bare table, one
``executemany`` and one commit a group (``bench.ingest_queue_bare_grouped``'s group). The CPU
of a single thread moves far less with the machine's load than throughput does, so this is the
figure to compare two versions of ingest by. Beside it, the CPU of the server process serving
the connection (``pg_backend_pid``, read from ``/proc``: the server runs on the same machine).

Prints one JSON object: client and server CPU-ms per group and per event of each, and the
ratio of the client's.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import text

from bench.ingest_common import (
    HISTORY,
    bare_rows,
    bench_url,
    create_bare_table,
    libpq_url,
    reset_with_history,
    tree_cpu_seconds,
)
from bench.ingest_profile import shop_events
from models.session import make_engine

Cpu = tuple[float, float]


def _bare(url: str, groups: list[list[dict[str, Any]]], history: list[dict[str, Any]]) -> Cpu:
    with psycopg.connect(libpq_url(url)) as conn:
        create_bare_table(conn, history)
        server = conn.info.backend_pid
        start, server_start = time.process_time(), tree_cpu_seconds(server)
        for group in groups:
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO bare_events VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    bare_rows(group),
                )
            conn.commit()
        return time.process_time() - start, tree_cpu_seconds(server) - server_start


def _ingest(url: str, groups: list[list[dict[str, Any]]], now: datetime) -> Cpu:
    from config import load_config
    from ingest.service import ingest_batch
    from models.session import make_session_factory

    engine = make_engine(url)
    try:
        factory, config = make_session_factory(engine), load_config(None)
        # The first groups prepare the statements and fill the caches, as a worker's warm-up.
        for group in groups[:20]:
            ingest_batch(factory, group, config, now)
        # One thread: the pool hands out the same connection each time.
        with factory() as session:
            server = int(session.scalar(text("SELECT pg_backend_pid()")) or 0)
        start, server_start = time.process_time(), tree_cpu_seconds(server)
        for group in groups[20:]:
            results = ingest_batch(factory, group, config, now)
            if any(r.status != "accepted" for r in results):
                raise RuntimeError(f"event not accepted: {results[0].to_dict()}")
        with factory() as session:
            if session.scalar(text("SELECT pg_backend_pid()")) != server:
                raise RuntimeError("ingest used another connection than the one measured")
        return time.process_time() - start, tree_cpu_seconds(server) - server_start
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=1500)
    parser.add_argument("--size", type=int, default=7)
    parser.add_argument("--history", type=int, default=20_000)
    args = parser.parse_args()
    url = bench_url()
    now = datetime.now(UTC)
    history = shop_events(args.history, prefix=HISTORY, at=now)
    events = shop_events((args.groups + 20) * args.size, prefix="g", at=now)
    groups = [events[i : i + args.size] for i in range(0, len(events), args.size)]
    reset_with_history(url, history, now)
    bare = _bare(url, groups[20:], history)
    ingest = _ingest(url, groups, now)
    measured = args.groups * args.size

    def figures(cpu: Cpu) -> dict[str, float]:
        client, server = cpu
        return {
            "cpu_ms_per_group": round(client * 1000 / args.groups, 3),
            "cpu_ms_per_event": round(client * 1000 / measured, 3),
            "server_cpu_ms_per_group": round(server * 1000 / args.groups, 3),
            "server_cpu_ms_per_event": round(server * 1000 / measured, 3),
        }

    print(
        json.dumps(
            {
                "benchmark": "ingest_group",
                "ratio_ingest_to_bare": round(ingest[0] / bare[0], 2),
                "bare_group": figures(bare),
                "ingest_group": figures(ingest),
                "groups": args.groups,
                "size": args.size,
                "history": args.history,
            }
        )
    )


if __name__ == "__main__":
    main()
