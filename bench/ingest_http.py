"""Benchmark: ``POST /v1/events`` with arrays of 1000 events against the real app on uvicorn.

    python -m bench.ingest_http [--purchases 10000] [--clients 2] [--workers 1] [--history 20000]

Rebuilds the schema of the benchmark database and stores a history of ``--history`` purchases
of other customers in it (``bench.ingest_common.reset_with_history``), starts
``nps-dispatch web`` on a free loopback port, and sends ``--purchases`` purchases of distinct
customers, then their delivery events, as arrays of 1000 from ``--clients`` threads (bodies
encoded beforehand). Two bare baselines, in the same run:

- the rows the product stored for those events (customers, orders, surveys, consents,
  transitions, the events' ledger rows), read back once the run is over and written again by
  psycopg ``executemany`` from as many connections as there are clients, into the same tables
  rebuilt with the same history: what the database alone takes to store what the product
  stored (``ratio_to_executemany_of_stored_rows``, the time of that ``executemany`` over the
  product's time). Each row goes in once, as last stored: the product also updates the orders
  and surveys its deliveries move, which the baseline does not repeat;
- one row per event, the event's fields, into a bare table with one index and as many rows
  (``ratio_to_executemany``): what the database takes for the events' bytes alone.

Prints one JSON object: events/s, the server's CPU-ms per event, the baselines and the ratios.
Nothing asserts on the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.ingest_common import (
    HISTORY,
    bench_url,
    executemany_rows_per_s,
    executemany_stored_rows_seconds,
    free_port,
    id_marks,
    product_env,
    reset_with_history,
    rows_since,
    tree_cpu_seconds,
    wait_for_port,
)
from bench.ingest_profile import fulfilments, shop_events

ARRAY = 1000


def deliveries(n: int, prefix: str, at: datetime) -> list[dict[str, Any]]:
    return [
        {**e, "type": "order.delivered", "event_id": e["event_id"].replace("evt-f-", "evt-d-")}
        for e in fulfilments(n, prefix=prefix, at=at)
    ]


def _post_all(port: int, bodies: list[bytes], clients: int) -> list[int]:
    url = f"http://127.0.0.1:{port}/v1/events"
    headers = {"Authorization": "Bearer bench-token", "Content-Type": "application/json"}

    def send(share: list[bytes]) -> list[int]:
        accepted = []
        with httpx.Client(timeout=600) as client:
            for body in share:
                response = client.post(url, content=body, headers=headers)
                response.raise_for_status()
                accepted.append(
                    sum(1 for r in response.json()["results"] if r["status"] == "accepted")
                )
        return accepted

    shares = [bodies[i::clients] for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        return [n for done in pool.map(send, shares) for n in done]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--purchases", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--history", type=int, default=20_000)
    args = parser.parse_args()
    url = bench_url()
    now = datetime.now(UTC)
    purchases = shop_events(args.purchases, prefix="h", at=now)
    delivered = deliveries(args.purchases, "h", now)
    events = purchases + delivered
    bodies = [json.dumps(events[i : i + ARRAY]).encode() for i in range(0, len(events), ARRAY)]
    history = shop_events(args.history, prefix=HISTORY, at=now)
    reset_with_history(url, history, now)
    baseline = executemany_rows_per_s(url, events, history)
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "cli.main", "web", "--host", "127.0.0.1"),
                *("--port", str(port), "--workers", str(args.workers)),
            ],
            env=product_env(url, Path(workdir)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(port)
            # One small request first, so that start-up is not counted.
            _post_all(port, [json.dumps(shop_events(1, prefix="warm", at=now)).encode()], 1)
            marks = id_marks(url)
            cpu_before = tree_cpu_seconds(server.pid)
            start = time.perf_counter()
            accepted = _post_all(port, bodies, args.clients)
            elapsed = time.perf_counter() - start
            cpu = tree_cpu_seconds(server.pid) - cpu_before
        finally:
            server.terminate()
            server.wait(timeout=30)
    stored = rows_since(url, marks)
    reset_with_history(url, history, now)
    stored_seconds = executemany_stored_rows_seconds(url, stored, clients=args.clients)
    stored_rows = sum(len(rows) for _, rows in stored.values())
    rate = len(events) / elapsed
    print(
        json.dumps(
            {
                "benchmark": "ingest_http",
                "ratio_to_executemany_of_stored_rows": round(stored_seconds / elapsed, 4),
                "ratio_to_executemany": round(rate / baseline, 4),
                "events_per_s": round(rate, 1),
                "executemany_stored_rows_events_per_s": round(len(events) / stored_seconds, 1),
                "stored_rows": stored_rows,
                "stored_rows_by_table": {t: len(rows) for t, (_, rows) in stored.items()},
                "executemany_rows_per_s": round(baseline, 1),
                "server_cpu_ms_per_event": round(cpu * 1000 / len(events), 3),
                "events": len(events),
                "accepted": sum(accepted),
                "array": ARRAY,
                "clients": args.clients,
                "web_workers": args.workers,
                "history": args.history,
                "seconds": round(elapsed, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
