"""Benchmark: shop events through the queue, a dramatiq worker on Redis.

    python -m bench.ingest_queue [--events 9000] [--batched-events 10000] [--processes 2]
                                 [--threads 8] [--event-threads 48] [--history 20000]
                                 [--rounds 3]

Four measurements in one run (the first two in ``--rounds`` alternate turns, see below), each
by a fresh worker (``--processes`` x ``--threads``) that has stored its warm-up events (twice
what its processes take ahead), timed from the moment the messages appear on Redis, all at
once (``_store_bodies``; the README says why), to the last event stored.

- the bare baseline: ``bench.ingest_queue_bare``, a dramatiq actor inserting one row into a bare
  table and committing, one message per event, with the same processes and threads (at most 8
  connections per process), taking as many messages ahead as the product's worker takes from
  its events queue (``worker.prefetch``);
- a second reference, ``bare_grouped`` (``bench.ingest_queue_bare_grouped``): the same rows,
  the threads of a process inserting theirs in shared groups through the product's group
  commit, one ``executemany`` and one commit a group: what grouping allows when a group costs
  next to nothing;
- ``ingest_event``: the product's worker (``nps-dispatch worker``), one purchase per message,
  with the events queue's own threads as shipped (``--event-threads``, ``worker.event_threads``)
  beside the ``--threads`` the bare actor gets, applying their events in shared groups
  (``ingest.grouped``); ``mean_group`` is the events per applied group, read from the ledger
  (a group stamps one ``received_at``);
- ``ingest_events``: the same worker, messages of ``--per-message`` purchases (skipped with
  ``--batched-events 0``).

The benchmark database is rebuilt before each (``bench.ingest_common``), then given a history
of ``--history`` purchases of other customers and analysed, as a shop's database that has been
running holds (``reset_with_history`` says why; ``--history 0`` measures on empty tables); the
bare table gets as many rows. Redis is ``NPS_BENCH_REDIS_URL`` (default
``redis://127.0.0.1:6391/1``), flushed first. Prints one JSON
object: events/s and the workers' CPU-ms per event of each, the ratios, and the workers'
resident memory. Nothing asserts on the figures.

The bare actor and ``ingest_event`` run in turns, ``--rounds`` of each: the bare actor's rate
moved by half between runs minutes apart on a machine otherwise idle (and between rounds of
3,000 events, a second or two each, by a third; hence 9,000). ``ratio_single_to_bare`` is the
median of the rounds' ratios (the lower middle one of an even number), each round's ratio is
printed beside it, and each figure is its median round's.
``bare_grouped`` and the batched run are measured once, after the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from bench.ingest_common import (
    HISTORY,
    bench_url,
    create_bare_table,
    libpq_url,
    product_env,
    reset_schema,
    reset_with_history,
    tree_cpu_seconds,
)
from bench.ingest_profile import shop_events
from config.settings import WORKER_EVENT_THREADS
from worker.prefetch import PREFETCH_PER_THREAD, PREFETCH_VARIABLE

#: The prefix of the warm-up events' ids.
WARM_UP = "qw"


def _redis_url() -> str:
    return os.environ.get("NPS_BENCH_REDIS_URL", "redis://127.0.0.1:6391/1")


def _broker() -> RedisBroker:
    return RedisBroker(url=_redis_url())


def _enqueue(client: RedisBroker, queue: str, actor: str, payloads: list[Any]) -> None:
    for payload in payloads:
        client.enqueue(
            Message(queue_name=queue, actor_name=actor, args=(payload,), kwargs={}, options={})
        )


def _store_bodies(queue: str, actor: str, payloads: list[Any]) -> Callable[[], None]:
    """Store one message per payload as dramatiq's Redis broker stores a message (its body in
    the queue's hash under a new Redis id, as ``worker.enqueue.send_many`` does), and return
    the function that pushes all their ids on the queue's list in one ``RPUSH``: until it
    runs, no worker sees any of them; once it has, a worker sees them all."""
    broker = _broker()
    queue_key = f"{broker.namespace}:{queue}"
    stored: dict[str, bytes] = {}
    for payload in payloads:
        redis_id = str(uuid.uuid4())
        message: Message[Any] = Message(
            queue_name=queue,
            actor_name=actor,
            args=(payload,),
            kwargs={},
            options={"redis_message_id": redis_id},
        )
        stored[redis_id] = message.encode()
    ids = list(stored)
    for begin in range(0, len(ids), 1000):
        chunk = {i: stored[i] for i in ids[begin : begin + 1000]}
        broker.client.hset(f"{queue_key}.msgs", mapping=chunk)

    def push() -> None:
        try:
            broker.client.rpush(queue_key, *ids)
        finally:
            broker.close()

    return push


def _rss_mb(pid: int) -> float:
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            pending.extend(
                int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()
            )
        except FileNotFoundError:
            continue
    return total / 1024


def _local_process(pid: int, name: str) -> int | None:
    """``pid`` when it is a process of this machine running ``name`` (not a container's pid,
    not an unrelated process with the pid a remote server reported)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if pid > 1 and comm == name else None


def _servers(url: str) -> dict[str, int]:
    """The process ids of the PostgreSQL server (its postmaster, the backends' parent) and of
    Redis, when they run on this machine, to count their CPU beside the worker's."""
    pids: dict[str, int] = {}
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    backend = _local_process(int(row[0]), "postgres") if row else None
    if backend is not None:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
            if (postmaster := _local_process(int(stat[1]), "postgres")) is not None:
                pids["postgres"] = postmaster
    with contextlib.suppress(redis.RedisError, KeyError, ValueError):
        reported = int(redis.Redis.from_url(_redis_url()).info("server")["process_id"])
        if (server := _local_process(reported, "redis-server")) is not None:
            pids["redis"] = server
    return pids


def _drain(
    command: list[str],
    env: dict[str, str],
    table: str,
    send: tuple[str, str, list[Any], list[Any]],
    total: int,
) -> dict[str, float]:
    """Start a worker, wait until it has stored its warm-up events, then put ``send``'s
    payloads on Redis at once (``send`` is queue, actor, warm-up payloads, payloads) and time
    it until ``total`` more rows are in ``table``. Every warm-up payload is one row."""
    queue, actor, warm_ups, payloads = send
    servers = _servers(env["NPS_DATABASE_URL"])
    redis.Redis.from_url(_redis_url()).flushdb()
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(contextlib.closing(_broker()))
        # One connection polls, its server process counted with the others: a new connection
        # per poll would add a backend's start-up to the servers' CPU fifty times a second.
        poll = stack.enter_context(
            psycopg.connect(libpq_url(env["NPS_DATABASE_URL"]), autocommit=True)
        )

        def count() -> int:
            row = poll.execute(f"SELECT count(*) FROM {table}", prepare=False).fetchone()
            return int(row[0]) if row else 0

        history = count()
        _enqueue(client, queue, actor, warm_ups)
        worker = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        stack.callback(_stop, worker)
        deadline = time.monotonic() + 1800
        while (first := count()) < history + len(warm_ups):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError("the worker did not store its warm-up events")
            time.sleep(0.02)
        # Built and stored before the clock starts; the push makes them visible at once.
        push = _store_bodies(queue, actor, payloads)
        start, cpu_start = time.perf_counter(), tree_cpu_seconds(worker.pid)
        servers_start = {name: tree_cpu_seconds(pid) for name, pid in servers.items()}
        push()
        done = first
        while done < first + total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done - first} of {total} events stored")
            time.sleep(0.02)
            done = count()
        elapsed = time.perf_counter() - start
        cpu = tree_cpu_seconds(worker.pid) - cpu_start
        servers_cpu = {
            name: tree_cpu_seconds(pid) - servers_start[name] for name, pid in servers.items()
        }
        rss = _rss_mb(worker.pid)
    return {
        "events_per_s": round(total / elapsed, 1),
        "cpu_ms_per_event": round(cpu * 1000 / total, 3),
        **{
            f"{name}_cpu_ms_per_event": round(seconds * 1000 / total, 3)
            for name, seconds in servers_cpu.items()
        },
        "rss_mb": round(rss, 1),
    }


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.terminate()
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _mean_group(url: str) -> float:
    """Events per applied batch: a batch stamps one ``received_at`` on the ledger rows of all
    its events (the history and the warm-up events are left out)."""
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute(
            "SELECT count(*)::float / greatest(count(DISTINCT received_at), 1) FROM inbound_events"
            f" WHERE external_id NOT LIKE 'evt-{HISTORY}-%'"
            f" AND external_id NOT LIKE 'evt-{WARM_UP}-%'"
        ).fetchone()
    return round(float(row[0]), 2) if row else 0.0


def _median_round(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """The round of median events/s (the lower middle one of an even number), with every
    round's events/s beside it."""
    ordered = sorted(rounds, key=lambda r: r["events_per_s"])
    return {
        **ordered[(len(ordered) - 1) // 2],
        "events_per_s_by_round": [r["events_per_s"] for r in rounds],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=9000)
    parser.add_argument("--batched-events", type=int, default=10_000)
    parser.add_argument("--per-message", type=int, default=500)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--event-threads", type=int, default=WORKER_EVENT_THREADS)
    parser.add_argument("--history", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url = bench_url()
    now = datetime.now(UTC)
    workers = ["--processes", str(args.processes), "--threads", str(args.threads)]
    product = [*workers, "--event-threads", str(args.event_threads)]
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as workdir:
        env = product_env(url, Path(workdir), NPS_BROKER_URL=_redis_url())
        ledger = "inbound_events"

        history = shop_events(args.history, prefix=HISTORY, at=now)

        def warm_ups() -> list[dict[str, Any]]:
            # Twice what the worker's processes take ahead: each process takes some, so that
            # none is still asleep in a consumer's back-off (up to a second) when the timed
            # messages arrive, and each has prepared its statements.
            count = 2 * args.processes * args.threads * PREFETCH_PER_THREAD
            return shop_events(count, prefix=WARM_UP, at=now)

        def bare_run(module: str, actor: str) -> dict[str, float]:
            reset_schema(url)
            with psycopg.connect(libpq_url(url)) as conn:
                create_bare_table(conn, history)
            events = shop_events(args.events, prefix="qb", at=now)
            return _drain(
                [sys.executable, "-m", "dramatiq", module, *workers],
                {
                    **env,
                    "NPS_BENCH_LIBPQ_URL": libpq_url(url),
                    PREFETCH_VARIABLE: str(args.threads * PREFETCH_PER_THREAD),
                },
                "bare_events",
                ("bare", actor, warm_ups(), events),
                args.events,
            )

        def single() -> dict[str, float]:
            reset_with_history(url, history, now)
            events = shop_events(args.events, prefix="qs", at=now)
            measured = _drain(
                [sys.executable, "-m", "cli.main", "worker", *product],
                env,
                ledger,
                ("events", "ingest_event", warm_ups(), events),
                args.events,
            )
            return {**measured, "mean_group": _mean_group(url)}

        # The bare actor and one event per message, in turns: the load of a shared machine
        # drifts between runs of a second or two, and a round's ratio compares like with like.
        bare_rounds: list[dict[str, float]] = []
        single_rounds: list[dict[str, float]] = []
        for _ in range(max(1, args.rounds)):
            bare_rounds.append(bare_run("bench.ingest_queue_bare", "bare_insert"))
            single_rounds.append(single())
        round_ratios = [
            round(s["events_per_s"] / b["events_per_s"], 3)
            for b, s in zip(bare_rounds, single_rounds, strict=True)
        ]
        figures["bare_actor"] = _median_round(bare_rounds)
        figures["ingest_event"] = _median_round(single_rounds)
        # The rows of a group of messages inserted by one executemany: one run.
        figures["bare_grouped"] = bare_run("bench.ingest_queue_bare_grouped", "bare_grouped_insert")

        # Many events per message (skipped with --batched-events 0).
        if args.batched_events > 0:
            reset_with_history(url, history, now)
            events = shop_events(args.batched_events, prefix="qm", at=now)
            step = args.per_message
            lists = [events[i : i + step] for i in range(0, len(events), step)]
            figures["ingest_events"] = _drain(
                [sys.executable, "-m", "cli.main", "worker", *product],
                env,
                ledger,
                ("events", "ingest_events", [[e] for e in warm_ups()], lists),
                args.batched_events,
            )
    bare = figures["bare_actor"]["events_per_s"]
    ratios: dict[str, Any] = {
        "ratio_single_to_bare": statistics.median_low(round_ratios),
        "ratio_single_to_bare_by_round": round_ratios,
    }
    ratios |= {
        f"ratio_{name}_to_bare": round(figures[key]["events_per_s"] / bare, 3)
        for name, key in (("batched", "ingest_events"), ("bare_grouped", "bare_grouped"))
        if key in figures
    }
    # What the product's ingest leaves of what grouping allows.
    ratios["ratio_single_to_bare_grouped"] = round(
        figures["ingest_event"]["events_per_s"] / figures["bare_grouped"]["events_per_s"], 3
    )
    print(
        json.dumps(
            {
                "benchmark": "ingest_queue",
                **ratios,
                **figures,
                "events": args.events,
                "batched_events": args.batched_events,
                "per_message": args.per_message,
                "processes": args.processes,
                "threads": args.threads,
                "event_threads": args.event_threads,
                "history": args.history,
                "rounds": len(round_ratios),
            }
        )
    )


if __name__ == "__main__":
    main()
