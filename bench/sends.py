"""Benchmark: invitations sent per second by a real dramatiq worker, beside a bare actor.

    python -m bench.sends [--sends 3000] [--processes 2] [--threads 8] [--latency 0.05]

Needs PostgreSQL (``NPS_BENCH_POSTGRES_URL``, else ``NPS_TEST_POSTGRES_URL`` with the database
``nps_bench_sends`` on the same server, created when missing) and Redis (``NPS_BENCH_REDIS_URL``,
default ``redis://127.0.0.1:6391/11``, emptied). A fake SendGrid (``bench.fakes.provider``, in a
process of its own) accepts every mail after ``--latency`` seconds. For each of the two workers,
in the same run and on the same rows (``--sends`` email surveys in ``queued``, rebuilt with the
real migrations and seeded with ``INSERT ... SELECT generate_series``):

- ``product``: ``dramatiq worker.actors`` with ``--processes`` x ``--threads``, as
  ``nps-dispatch worker`` runs it (the events queue's own threads included, idle here), fed
  ``send_survey(id)`` messages on its queue ``sends``: the whole send path (pick-up, rate limit
  through Redis, claim and re-check, rendering, the provider call, the record, the logs and
  metrics);
- ``bare``: ``dramatiq bench.sends_bare`` with the same processes and threads: the same provider
  call and one ``UPDATE`` per message.

Each worker first sends ``--warmup`` messages (not timed); then the timer runs from the first
enqueue of ``--sends`` messages until the database shows every one sent. Measured: sends/s, the
worker processes' CPU per send (user + system, from ``/proc``), each worker process's resident
memory after the run, and the new PostgreSQL sessions during the timed part
(``pg_stat_database.sessions``). The ideal is ``processes x threads / latency`` sends/s (every
thread always waiting on the provider). ``--source DIR`` runs the product worker from another
checkout of the code; ``--compare DIR`` runs a second product worker from another checkout in
the same rounds (two versions compared on the same machine state). It prints one JSON object;
nothing is asserted: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, make_url, text

from bench.databases import bench_url, ensure_database
from config.settings import EVENT_THREADS_VARIABLE, WORKER_EVENT_THREADS
from migrations.runner import upgrade
from models.session import make_engine

ROOT = Path(__file__).resolve().parent.parent
SENDGRID_KEY = "SG.bench-key"
TICKS = os.sysconf("SC_CLK_TCK")

SEED = """
INSERT INTO customers (id, external_id, email, email_status, phone_status, timezone, locale,
                       first_name, created_at, updated_at)
SELECT g, 'bench-c-' || g, 'c' || g || '@example.test', 'valid', 'missing', 'Europe/Berlin',
       'en', 'Ana', now(), now()
FROM generate_series(1, CAST(:n AS bigint)) AS g;
INSERT INTO consent_records (customer_id, channel, granted, captured_at, recorded_at,
                             evidence_kind)
SELECT g, 'email', true, now() - interval '30 days', now() - interval '30 days', 'event'
FROM generate_series(1, CAST(:n AS bigint)) AS g;
INSERT INTO orders (id, external_id, customer_id, purchased_at, delivered_at, total_amount,
                    currency, category, sales_channel, country, previous_orders, is_test,
                    created_at)
SELECT g, 'bench-o-' || g, g, now() - interval '3 days', now() - interval '1 day', 50, 'EUR',
       'books', 'web', 'DE', 0, false, now()
FROM generate_series(1, CAST(:n AS bigint)) AS g;
INSERT INTO surveys (id, order_id, customer_id, channel, state, state_changed_at, planned_at,
                     anchor_kind, anchor_at, delay_seconds, timezone, due_at, queued_at,
                     tried_channels, attempts, reminders_sent)
SELECT g, g, g, 'email', 'queued', now(), now(), 'delivered', now() - interval '1 day', 259200,
       'Europe/Berlin', now(), now(), 'email', 0, 0
FROM generate_series(1, CAST(:n AS bigint)) AS g;
"""

# Every hour and day may send, and the rate limit is far above what the run can reach.
CONFIG = """
[schedule]
quiet_hours = { start = "00:00", end = "00:00" }
send_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

[rate_limits]
email = 100000.0
sms = 100000.0
"""


def bench_urls() -> tuple[str, str]:
    database = bench_url("nps_bench_sends")
    return database, os.environ.get("NPS_BENCH_REDIS_URL", "redis://127.0.0.1:6391/11")


def rebuild(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    upgrade(engine)
    with engine.begin() as conn:
        for statement in SEED.split(";"):
            if statement.strip():
                conn.execute(text(statement), {"n": n})
        conn.execute(text("ANALYZE"))


# -- the fake provider, in a process of its own ------------------------------------------------
def _serve_provider(latency: float, ports: Any, stop: Any) -> None:
    from bench.fakes.faults import FaultPlan
    from bench.fakes.provider import FakeProvider

    provider = FakeProvider(
        account_sid="AC" + "0" * 32,
        auth_token="bench",
        sendgrid_key=SENDGRID_KEY,
        faults=FaultPlan(seed=1, rate=0.0),
        client_timeout=10.0,
        on_request=lambda _to: latency,
    )
    ports.put(provider.start())
    stop.wait()
    provider.stop()


# -- processes -----------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def pg_sessions(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        )


def wait_sent(engine: Engine, count: int, timeout: float) -> float:
    """Poll until ``count`` surveys are sent; returns the moment that was first seen."""
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            done = conn.execute(text("SELECT count(*) FROM surveys WHERE state = 'sent'")).scalar()
            if done is not None and done >= count:
                return time.perf_counter()
            conn.commit()
            time.sleep(0.05)
    raise SystemExit(f"only part of {count} sends done after {timeout} s; see the worker log")


def run_worker(
    name: str,
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    queue: str,
    actor: str,
    engine: Engine,
    redis_url: str,
    args: argparse.Namespace,
    log_dir: Path,
) -> dict[str, Any]:
    total = args.warmup + args.sends
    rebuild(engine, total)
    redis.Redis.from_url(redis_url).flushdb()
    broker = RedisBroker(url=redis_url)
    broker.declare_queue(queue)

    def enqueue(ids: range) -> None:
        for survey_id in ids:
            broker.enqueue(dramatiq.Message(queue, actor, (survey_id,), {}, {}))

    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        enqueue(range(1, args.warmup + 1))
        wait_sent(engine, args.warmup, 120)
        pids = descendants(proc.pid)
        # As the scheduler would have just queued them (a fresh lease needs no renewal).
        with engine.begin() as conn:
            conn.execute(text("UPDATE surveys SET queued_at = now() WHERE state = 'queued'"))
        cpu_before, sessions_before = cpu_seconds(pids), pg_sessions(engine)
        started = time.perf_counter()
        enqueue(range(args.warmup + 1, total + 1))
        finished = wait_sent(engine, total, 60 + args.sends / 10)
        elapsed = finished - started
        cpu = cpu_seconds(pids) - cpu_before
        sessions = pg_sessions(engine) - sessions_before
        workers = [p for p in descendants(proc.pid) if p != proc.pid]
        rss = [rss_mb(p) for p in workers]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        broker.close()
    return {
        "sends_per_s": round(args.sends / elapsed, 1),
        "elapsed_s": round(elapsed, 2),
        "cpu_ms_per_send": round(cpu * 1000 / args.sends, 2),
        "rss_mb_per_process": rss,
        "new_pg_sessions": sessions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sends")
    parser.add_argument("--sends", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to run the worker from")
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="another checkout whose worker runs too (as product_compared), in the same rounds",
    )
    parser.add_argument("--skip-bare", action="store_true")
    parser.add_argument(
        "--rounds", type=int, default=2, help="product and bare alternately; the best round counts"
    )
    args = parser.parse_args(argv)

    database, redis_url = bench_urls()
    ensure_database(database)
    engine = make_engine(database, pool_size=2)
    ports: Any = multiprocessing.Queue()
    stop = multiprocessing.Event()
    server = multiprocessing.Process(
        target=_serve_provider, args=(args.latency, ports, stop), daemon=True
    )
    server.start()
    provider_url = f"http://127.0.0.1:{ports.get(timeout=30)}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-sends-"))
    (workdir / "nps-dispatch.toml").write_text(CONFIG)
    pool = ["--processes", str(args.processes), "--threads", str(args.threads)]
    source = args.source.resolve()
    product_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(source),
        "NPS_DATABASE_URL": database,
        "NPS_BROKER_URL": redis_url,
        "NPS_CONFIG": str(workdir / "nps-dispatch.toml"),
        "NPS_SECRET_KEY": "bench-secret-key",
        "NPS_INGEST_TOKEN": "bench-token",
        "NPS_DASHBOARD_PASSWORD": "bench-password",
        "NPS_PUBLIC_BASE_URL": "https://nps.example.test",
        "SENDGRID_API_KEY": SENDGRID_KEY,
        "SENDGRID_FROM": "surveys@shop.example",
        "SENDGRID_API_BASE": provider_url,
        EVENT_THREADS_VARIABLE: str(WORKER_EVENT_THREADS),
    }
    sqlalchemy_url = make_url(database)
    libpq_url = sqlalchemy_url.set(drivername="postgresql").render_as_string(False)
    result: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPUs, shared with other work while measured",
        "workers": f"{args.processes} processes x {args.threads} threads",
        "provider_latency_s": args.latency,
        "sends": args.sends,
        "ideal_sends_per_s": round(args.processes * args.threads / args.latency, 1),
    }
    variants: dict[str, tuple[list[str], dict[str, str], Path, str, str]] = {
        "product": (
            [sys.executable, "-m", "dramatiq", "worker.actors", *pool, "--skip-logging"],
            product_env,
            source,
            "sends",
            "send_survey",
        ),
        "bare": (
            [sys.executable, "-m", "dramatiq", "bench.sends_bare", *pool],
            {
                "PATH": product_env["PATH"],
                "PYTHONPATH": str(ROOT),
                "BENCH_SENDS_REDIS": redis_url,
                "BENCH_SENDS_DATABASE": libpq_url,
                "BENCH_SENDS_PROVIDER": provider_url,
            },
            ROOT,
            "bare_sends",
            "bare_send",
        ),
    }
    if args.compare is not None:
        other = args.compare.resolve()
        variants["product_compared"] = (
            variants["product"][0],
            {**product_env, "PYTHONPATH": str(other)},
            other,
            "sends",
            "send_survey",
        )
    if args.skip_bare:
        del variants["bare"]
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    try:
        # Alternately, so that a busy spell of a shared machine does not fall on one side only.
        for number in range(args.rounds):
            for name, (command, env, cwd, queue, actor) in variants.items():
                figures = run_worker(
                    f"{name}-{number}",
                    command,
                    env,
                    cwd,
                    queue,
                    actor,
                    engine,
                    redis_url,
                    args,
                    workdir,
                )
                rounds[name].append(figures)
                print(json.dumps({name: figures}), file=sys.stderr, flush=True)
    finally:
        stop.set()
        server.join(timeout=10)
        engine.dispose()
    for name, measured in rounds.items():
        result[name] = max(measured, key=lambda f: f["sends_per_s"])
        result[f"{name}_rounds_sends_per_s"] = [f["sends_per_s"] for f in measured]
    product = result["product"]
    ratios = {"product_to_ideal": round(product["sends_per_s"] / result["ideal_sends_per_s"], 3)}
    if "bare" in result:
        bare = result["bare"]
        ratios["product_to_bare"] = round(product["sends_per_s"] / bare["sends_per_s"], 3)
        ratios["bare_to_ideal"] = round(bare["sends_per_s"] / result["ideal_sends_per_s"], 3)
        ratios["cpu_product_to_bare"] = round(
            product["cpu_ms_per_send"] / max(bare["cpu_ms_per_send"], 0.01), 2
        )
    if "product_compared" in result:
        ratios["product_to_compared"] = round(
            product["sends_per_s"] / result["product_compared"]["sends_per_s"], 3
        )
    result["ratios"] = ratios
    result["logs"] = str(workdir)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
