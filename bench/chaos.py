"""The chaos run: the product's three promises under misbehaving providers, processes and clocks.

    python -m bench.chaos [--purchases 3000] [--seed 1]        (CI: --purchases 300)

Starts a private PostgreSQL database, a private Redis server, the product as real processes (one
``nps-dispatch web``, two ``worker``, two ``scheduler``) and, in this process, a fake Twilio and
SendGrid (:mod:`bench.fakes`) that answers 15% of requests badly, a simulated shop
(:mod:`bench.chaos_shop`) and simulated customers (:mod:`bench.chaos_customers`). While the shop
sends its events, a worker is SIGKILLed and restarted every few seconds and Redis is restarted
once. Then the run waits until every response window has closed, stops everything, and checks
(:mod:`bench.chaos_checks`): nothing sent twice, nothing without consent, nothing lost.

Prints one JSON object on stdout (progress goes to stderr) and exits 1 on any violation, 2 when
the run itself could not be carried out. Everything it started is stopped and its database
dropped on every exit, including Ctrl-C; a helper process (:mod:`bench.chaos_reaper`) does it
even if this process is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import redis

from bench.chaos_checks import Verdict, verify
from bench.chaos_customers import Customers
from bench.chaos_processes import Database, Proc, RedisServer, Supervisor, free_port
from bench.chaos_shop import Shop, ShopPlan, make_plan
from bench.chaos_timeline import Timeline
from bench.fakes.delivery import SHOP_NUMBER, Callbacks, MailboxFacts
from bench.fakes.faults import FaultPlan
from bench.fakes.provider import TWILIO, FakeProvider, Message
from bench.fakes.signing import SendGridSigner, TwilioSigner
from channels.registry import DEFAULT_TIMEOUT
from config import load_config
from models import Survey
from models.lifecycle import FINAL_STATES
from models.session import make_engine, make_session_factory

DEFAULT_SERVER = "postgresql+psycopg://nps:nps@127.0.0.1:5432/postgres"

RESPONSE_WINDOW = 40
REMINDER_AFTER = 15
DELAY = 5
JITTER = 5
ANCHOR_TIMEOUT = 20
#: The drain gives up when no survey, message or recorded event has changed for this long.
STALL_SECONDS = 90.0
SCHEDULER_FLAGS = (
    "--interval", "1", "--stuck-after", "60", "--sending-timeout", "15", "--give-up-after", "45",
)  # fmt: skip

CONFIG_TOML = f"""\
# Written by bench/chaos.py: days compressed into seconds, no quiet hours, every day a send day.
[survey]
shop_name = "Chaos Shop"
response_window = "{RESPONSE_WINDOW}s"
reminder = {{ after = "{REMINDER_AFTER}s", max = 1 }}

[schedule]
anchor = "delivered"
anchor_timeout = "{ANCHOR_TIMEOUT}s"
delay = "{DELAY}s"
quiet_hours = {{ start = "00:00", end = "00:00" }}
send_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
jitter = "{JITTER}s"
default_timezone = "UTC"

[contact]
channels = ["email", "sms"]
fallback = true
frequency_cap = "1d"
sample_rate = 1.0
exclude = {{ test_orders = true, min_total = "0" }}

[rate_limits]
email = 500.0
sms = 500.0
"""


@dataclass(frozen=True)
class Options:
    purchases: int
    seed: int
    rate: float
    fault_rate: float
    workers: int
    schedulers: int
    kill_every: float
    redis_down: float
    drain_timeout: float
    server_url: str
    database: str
    keep_logs: bool


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--purchases", type=int, default=3000, help="purchases to simulate")
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the shop, faults and customers"
    )
    parser.add_argument("--rate", type=float, default=20.0, help="purchases per second")
    parser.add_argument(
        "--fault-rate", type=float, default=0.15, help="share of provider requests answered badly"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--schedulers", type=int, default=2)
    parser.add_argument(
        "--kill-every", type=float, default=6.0, help="mean seconds between worker kills (0: none)"
    )
    parser.add_argument(
        "--redis-down", type=float, default=2.0, help="seconds Redis stays down at its restart"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        help="seconds to wait for every window to close",
    )
    parser.add_argument(
        "--database",
        default=None,
        help="database created (and dropped) for the run; default nps_chaos_<process id>, so "
        "that runs on one server at the same time never share one",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the processes' logs even on success"
    )
    args = parser.parse_args(argv)
    if args.purchases < 1 or args.rate <= 0 or args.workers < 1 or args.schedulers < 1:
        parser.error("--purchases, --rate, --workers and --schedulers must be positive")
    server = (
        os.environ.get("NPS_CHAOS_POSTGRES_URL")
        or os.environ.get("NPS_TEST_POSTGRES_URL")
        or DEFAULT_SERVER
    )
    drain = args.drain_timeout or 120.0 + args.purchases / 5.0
    return Options(
        args.purchases, args.seed, args.rate, args.fault_rate, args.workers, args.schedulers,
        args.kill_every, args.redis_down, drain, server,
        args.database or f"nps_chaos_{os.getpid()}", args.keep_logs,
    )  # fmt: skip


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def progress(message: str) -> None:
    print(f"[chaos {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class ChaosRun:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="nps-chaos-"))
        (self.tmp / "logs").mkdir()
        (self.tmp / "redis").mkdir()
        self.supervisor = Supervisor(self.tmp / "logs", env={})
        self.database = Database(opts.server_url, opts.database)
        self.redis = RedisServer(self.supervisor, self.tmp / "redis")
        self.timeline: Timeline | None = None
        self.provider: FakeProvider | None = None
        self.callbacks: Callbacks | None = None
        self.customers: Customers | None = None
        self.shop: Shop | None = None
        self.workers: list[Proc] = []
        self.others: list[Proc] = []
        self.kills = 0
        self.unexpected: Counter[str] = Counter()
        self.started = time.monotonic()
        self.phases: dict[str, float] = {}
        self.settled = False
        self.drain_end = "not reached"
        self.stranded = 0
        self.queued_events: set[str] = set()
        self.queue_holders: dict[str, int] = {}

    # -- setting up ------------------------------------------------------------------------------
    def _env(self, web_port: int, fake_port: int, sendgrid_public_key: str) -> dict[str, str]:
        keep = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NPS_", "TWILIO_", "SENDGRID_"))
        }
        fake = f"http://127.0.0.1:{fake_port}"
        return {
            **keep,
            "PYTHONUNBUFFERED": "1",
            "NPS_DATABASE_URL": self.database.url,
            "NPS_BROKER_URL": self.redis.url,
            "NPS_CONFIG": str(self.tmp / "chaos.toml"),
            "NPS_PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}",
            "NPS_SECRET_KEY": self.secret_key,
            "NPS_INGEST_TOKEN": self.ingest_token,
            "NPS_DASHBOARD_PASSWORD": secrets.token_urlsafe(16),
            "NPS_LOG_LEVEL": "WARNING",
            "TWILIO_ACCOUNT_SID": self.account_sid,
            "TWILIO_AUTH_TOKEN": self.auth_token,
            "TWILIO_FROM": SHOP_NUMBER,
            "TWILIO_API_BASE": fake,
            "SENDGRID_API_KEY": self.sendgrid_key,
            "SENDGRID_FROM": "Chaos Shop <survey@shop.example>",
            "SENDGRID_API_BASE": fake,
            "SENDGRID_WEBHOOK_PUBLIC_KEY": sendgrid_public_key,
            "SENDGRID_UNSUBSCRIBE_GROUP_ID": "4242",
        }

    def setup(self, plan: ShopPlan) -> None:
        self.supervisor.start_reaper()
        self.supervisor.tell_reaper(f"directory {self.tmp}")
        self.secret_key = secrets.token_urlsafe(32)
        self.ingest_token = secrets.token_urlsafe(24)
        self.account_sid = "AC" + secrets.token_hex(16)
        self.auth_token = secrets.token_hex(16)
        self.sendgrid_key = "SG." + secrets.token_urlsafe(32)
        (self.tmp / "chaos.toml").write_text(CONFIG_TOML)
        self.config = load_config(self.tmp / "chaos.toml")

        self.supervisor.tell_reaper(f"database {self.database.admin_url} {self.database.name}")
        self.database.create()
        self.redis.start()
        progress(f"database {self.database.name} migrated; redis on port {self.redis.port}")

        customers = plan.customers.values()
        self.timeline = Timeline(threads=24)
        self.provider = FakeProvider(
            account_sid=self.account_sid,
            auth_token=self.auth_token,
            sendgrid_key=self.sendgrid_key,
            faults=FaultPlan(self.opts.seed, self.opts.fault_rate),
            client_timeout=DEFAULT_TIMEOUT,
            landlines=frozenset(c.phone for c in customers if c.phone and c.landline),
        )
        fake_port = self.provider.start()
        web_port = free_port()
        sendgrid = SendGridSigner()
        self.supervisor.env = self._env(web_port, fake_port, sendgrid.public_key)
        self.web_base = f"http://127.0.0.1:{web_port}"
        self.callbacks = Callbacks(
            timeline=self.timeline,
            provider=self.provider,
            twilio=TwilioSigner(self.auth_token),
            sendgrid=sendgrid,
            account_sid=self.account_sid,
            sendgrid_url=f"{self.web_base}/webhooks/sendgrid/events",
            seed=self.opts.seed,
            facts=MailboxFacts(
                unreachable_phones=frozenset(
                    c.phone for c in customers if c.phone and c.unreachable
                ),
                bouncing_emails=frozenset(
                    c.email.lower() for c in customers if c.email and c.bouncing
                ),
            ),
        )
        self.customers = Customers(
            timeline=self.timeline,
            callbacks=self.callbacks,
            provider=self.provider,
            customers=plan.customers,
            web_base=self.web_base,
            seed=self.opts.seed,
        )
        self.callbacks.on_delivered = self.customers.on_delivered
        self.provider.on_created = self.callbacks.message_created

        cli = [sys.executable, "-m", "cli.main"]
        self.others.append(
            self.supervisor.start(
                "web", [*cli, "web", "--host", "127.0.0.1", "--port", str(web_port)]
            )
        )
        self._wait_for_web()
        for n in range(self.opts.schedulers):
            self.others.append(
                self.supervisor.start(f"scheduler{n}", [*cli, "scheduler", *SCHEDULER_FLAGS])
            )
        for n in range(self.opts.workers):
            self.workers.append(self._start_worker(n))
        progress(f"web :{web_port}; {self.opts.workers} workers; {self.opts.schedulers} schedulers")

    def _start_worker(self, n: int) -> Proc:
        argv = [sys.executable, "-m", "cli.main", "worker", "--processes", "1", "--threads", "8"]
        return self.supervisor.start(f"worker{n}", argv)

    def _wait_for_web(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.web_base}/healthz", timeout=2).status_code == 200:
                    return
            if not self.others[0].alive:
                break
            time.sleep(0.3)
        raise RuntimeError(f"the web process did not start; see {self.others[0].log}")

    # -- the run ---------------------------------------------------------------------------------
    def traffic(self, plan: ShopPlan) -> None:
        assert self.timeline is not None
        self.shop = Shop(plan, self.timeline, self.redis.url, self.web_base, self.ingest_token)
        assert self.provider is not None
        self.provider.on_request = self.shop.on_provider_request
        self.shop.watch(self._recorded_events)
        begin = time.monotonic() + 1.0
        self.shop.start(begin)
        emission_end = begin + plan.duration
        chaos_end = emission_end + 5.0
        redis_at = begin + plan.duration * 0.5
        next_kill = begin + self._kill_gap()
        next_report = time.monotonic() + 10
        progress(f"sending {len(plan.events)} events over {plan.duration:.0f} s")
        while time.monotonic() < chaos_end:
            now = time.monotonic()
            if self.opts.kill_every > 0 and now >= next_kill:
                self._kill_a_worker()
                next_kill = now + self._kill_gap()
            if self.redis.restarts == 0 and now >= redis_at:
                progress("restarting redis")
                self.redis.restart(self.opts.redis_down)
            self._keep_alive()
            if now >= next_report:
                progress(self._status())
                next_report = now + 10
            time.sleep(0.2)
        self.phases["traffic_seconds"] = round(time.monotonic() - begin, 1)

    def _kill_gap(self) -> float:
        return self.opts.kill_every * (0.5 + self.rng.random())

    def _kill_a_worker(self) -> None:
        index = self.rng.randrange(len(self.workers))
        self.supervisor.kill(self.workers[index])
        self.kills += 1
        self.workers[index] = self._start_worker(index)

    def _keep_alive(self) -> None:
        """A process of ours that died on its own is a finding: count it and start it again."""
        for i, proc in enumerate(self.workers):
            if not proc.alive:
                self.unexpected[proc.name] += 1
                self.workers[i] = self._start_worker(i)
        for i, proc in enumerate(self.others):
            if not proc.alive:
                self.unexpected[proc.name] += 1
                self.others[i] = self.supervisor.start(proc.name, proc.argv)

    def _counts(self) -> tuple[int, int, int]:
        engine = self._engine()
        factory = make_session_factory(engine)
        from sqlalchemy import func, select

        with factory() as session:
            total = session.scalar(select(func.count()).select_from(Survey)) or 0
            final = (
                session.scalar(
                    select(func.count())
                    .select_from(Survey)
                    .where(Survey.state.in_([s.value for s in FINAL_STATES]))
                )
                or 0
            )
        assert self.provider is not None
        return int(total), int(final), len(self.provider.messages)

    def _engine(self) -> Any:
        if not hasattr(self, "_engine_cache"):
            self._engine_cache = make_engine(self.database.url, pool_size=3, max_overflow=3)
        return self._engine_cache

    def _status(self) -> str:
        total, final, messages = self._counts()
        assert self.shop is not None
        sent = sum(v for k, v in self.shop.sent.items() if k in ("queue", "http"))
        return (
            f"events {sent}/{len(self.shop.plan.events)}, messages {messages}, "
            f"surveys final {final}/{total}, worker kills {self.kills}"
        )

    def _broker_backlog(self) -> int:
        client = redis.Redis.from_url(self.redis.url, socket_timeout=2)
        try:
            keys = [f"dramatiq:{q}.msgs" for q in ("events", "sends", "events.DQ", "sends.DQ")]
            return sum(int(client.hlen(k)) for k in keys)
        except redis.RedisError:
            return -1
        finally:
            client.close()

    def _still_moving(self) -> int:
        """Surveys the product may still move: not final and not an invitation whose window
        closed more than a few scheduler passes ago."""
        from sqlalchemy import func, or_, select

        factory = make_session_factory(self._engine())
        cutoff = datetime.now(UTC).timestamp() - 10
        with factory() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(Survey)
                    .where(
                        Survey.state.not_in([s.value for s in FINAL_STATES]),
                        or_(
                            Survey.closes_at.is_(None),
                            Survey.closes_at > datetime.fromtimestamp(cutoff, UTC),
                        ),
                    )
                )
                or 0
            )

    def _recorded_events(self, event_ids: list[str]) -> set[str]:
        from sqlalchemy import select

        from models import InboundEvent

        factory = make_session_factory(self._engine())
        with factory() as session:
            return set(
                session.scalars(
                    select(InboundEvent.external_id).where(
                        InboundEvent.source == "shop", InboundEvent.external_id.in_(event_ids)
                    )
                )
            )

    def _unrecorded_events(self) -> int:
        from sqlalchemy import func, select

        from models import InboundEvent

        assert self.shop is not None
        factory = make_session_factory(self._engine())
        with factory() as session:
            recorded = session.scalar(
                select(func.count()).select_from(InboundEvent).where(InboundEvent.source == "shop")
            )
        return len({e.event_id for e in self.shop.plan.events}) - int(recorded or 0)

    def drain(self) -> None:
        """Wait until nothing can still change: the shop has sent everything, the queues are
        empty, every webhook and answer is delivered, and every window has closed. Give up when
        nothing has moved for :data:`STALL_SECONDS`, or at the drain deadline."""
        assert self.timeline is not None and self.shop is not None
        begin = time.monotonic()
        deadline = begin + self.opts.drain_timeout
        calm = 0
        next_report = begin + 10
        last_change, seen = begin, (-1, -1, -1, -1)
        self.drain_end = "deadline"
        while time.monotonic() < deadline:
            self._keep_alive()
            actions, backlog, moving = (
                self.timeline.pending(),
                self._broker_backlog(),
                self._still_moving(),
            )
            # Messages a killed worker had taken stay in Redis until dramatiq's maintenance
            # gives them back (a minute or more); once every event is in the ledger they can
            # only be copies of work done.
            unrecorded = self._unrecorded_events()
            stranded_only = backlog > 0 and unrecorded == 0
            busy = actions + moving + (0 if stranded_only else abs(backlog))
            calm = calm + 1 if busy == 0 else 0
            if calm >= 3:
                self.settled, self.drain_end = True, "settled"
                break
            state = (*self._counts(), unrecorded)
            now = time.monotonic()
            if state != seen:
                last_change, seen = now, state
            elif now - last_change > STALL_SECONDS:
                self.drain_end = f"nothing changed for {STALL_SECONDS:.0f} s"
                break
            if now >= next_report:
                progress(
                    f"draining: {self._status()}; pending: {actions} actions, "
                    f"{backlog} queue messages, {moving} surveys, {unrecorded} events"
                )
                next_report = now + 10
            time.sleep(1.0)
        self.phases["drain_seconds"] = round(time.monotonic() - begin, 1)
        self.stranded = max(self._broker_backlog(), 0)
        self.queued_events = self._queued_event_ids()
        self.queue_holders = self._queue_holders()

    def _queue_holders(self) -> dict[str, int]:
        """Who holds the messages left in Redis: waiting in a queue, or taken (unacknowledged)
        by a worker whose heartbeat stopped (killed) or still beats."""
        client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        out: Counter[str] = Counter()
        try:
            for queue in ("events", "sends"):
                out["waiting"] += int(client.llen(f"dramatiq:{queue}"))
            # The same survey enqueued many times over: re-enqueued while a backlog was waiting.
            surveys: Counter[str] = Counter()
            for raw in client.hvals("dramatiq:sends.msgs"):
                with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                    message = json.loads(raw)
                    surveys[f"{message['actor_name']}:{message['args'][0]}"] += 1
            if surveys:
                out["sends for distinct surveys"] = len(surveys)
            pairs = client.zrange("dramatiq:__heartbeats__", 0, -1, withscores=True)
            beats = {_text(pair[0]): float(pair[1]) for pair in pairs if isinstance(pair, tuple)}
            now_ms = time.time() * 1000
            for key in client.scan_iter("dramatiq:__acks__.*"):
                worker_id = _text(key).split(".")[1]
                alive = now_ms - beats.get(worker_id, 0) < 10_000
                out["held by live workers" if alive else "held by killed workers"] += int(
                    client.scard(key)
                )
        except redis.RedisError:
            pass
        finally:
            client.close()
        return dict(out)

    def _queued_event_ids(self) -> set[str]:
        """Shop events still held in Redis (waiting, or taken by a worker that was killed)."""
        client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        found: set[str] = set()
        try:
            for key in ("dramatiq:events.msgs", "dramatiq:events.DQ.msgs"):
                for raw in client.hvals(key):
                    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                        found.add(str(json.loads(raw)["args"][0]["event_id"]))
        except redis.RedisError:
            pass
        finally:
            client.close()
        return found

    # -- the verdict -----------------------------------------------------------------------------
    def verdict(self) -> tuple[Verdict, list[Message]]:
        assert self.provider is not None and self.customers is not None
        assert self.shop is not None
        messages, attempts = self.provider.snapshot()
        factory = make_session_factory(self._engine())
        result = verify(
            factory,
            self.config,
            self.shop.plan,
            messages,
            attempts,
            self.customers.acts,
            datetime.now(UTC),
            self.queued_events,
            self.shop.visible_at,
        )
        return result, messages

    # -- cleaning up -----------------------------------------------------------------------------
    def stop_product(self) -> None:
        self.supervisor.stop_all()

    def cleanup(self, keep_logs: bool) -> Path | None:
        if self.timeline is not None:
            self.timeline.stop()
        if self.shop is not None:
            with contextlib.suppress(Exception):
                self.shop.close()
        if self.callbacks is not None:
            self.callbacks.close()
        if self.provider is not None:
            self.provider.stop()
        self.supervisor.stop_all()
        if hasattr(self, "_engine_cache"):
            self._engine_cache.dispose()
        try:
            self.database.drop()
        except Exception as exc:
            progress(f"could not drop database {self.database.name}: {exc}")
        self.supervisor.dismiss_reaper()
        logs: Path | None = None
        if keep_logs:
            logs = Path(tempfile.mkdtemp(prefix="nps-chaos-logs-"))
            shutil.copytree(self.tmp / "logs", logs, dirs_exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return logs


def summary(
    run: ChaosRun, verdict: Verdict, messages: list[Message], elapsed: float
) -> dict[str, Any]:
    assert run.shop is not None and run.provider is not None and run.callbacks is not None
    assert run.customers is not None and run.timeline is not None
    shop = run.shop
    kinds = {k: v for k, v in shop.sent.items() if k not in ("queue", "http", "duplicates")}
    faults: Counter[str] = Counter()
    for key, n in run.provider.injected.items():
        _, _, kind = key.partition(" ")
        faults[kind] += n
    return {
        "purchases": run.opts.purchases,
        "seed": run.opts.seed,
        "events_sent": {
            "total": shop.sent["queue"] + shop.sent["http"],
            "by_path": {"queue": shop.sent["queue"], "http": shop.sent["http"]},
            "by_type": dict(sorted(kinds.items())),
            "http_results": dict(shop.results),
            "never_taken": len(shop.failed),
            "retries": dict(shop.retries),
        },
        "duplicates": shop.sent["duplicates"],
        "messages_created": {
            "total": len(messages),
            "sms": sum(1 for m in messages if m.provider == TWILIO),
            "email": sum(1 for m in messages if m.provider != TWILIO),
        },
        "provider_requests": dict(sorted(run.provider.requests.items())),
        "faults_injected": dict(sorted(faults.items())),
        "faults_by_provider": dict(sorted(run.provider.injected.items())),
        "provider_refusals": dict(sorted(run.provider.refusals.items())),
        "webhook_deliveries": dict(sorted(run.callbacks.deliveries.items())),
        "customers": dict(sorted(run.customers.counts.items())),
        "redis_restarts": run.redis.restarts,
        "worker_kills": run.kills,
        "unexpected_exits": dict(run.unexpected),
        "harness_errors": dict(run.timeline.errors),
        "settled": run.settled,
        "drain_ended": run.drain_end,
        "queue_messages_left": {"total": run.stranded, **run.queue_holders},
        "elapsed_seconds": round(elapsed, 1),
        "phases": run.phases,
        "violations": verdict.violations,
        "violations_total": sum(verdict.violations.values()),
        "figures": verdict.figures,
        "examples": verdict.examples,
    }


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # Also SIGINT: a shell starting this in the background would have it ignored otherwise.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    started = time.monotonic()
    run = ChaosRun(opts)
    result: dict[str, Any] | None = None
    code = 2
    try:
        plan = make_plan(opts.purchases, opts.seed, opts.rate)
        run.setup(plan)
        run.traffic(plan)
        run.drain()
        run.stop_product()
        verdict, messages = run.verdict()
        result = summary(run, verdict, messages, time.monotonic() - started)
        code = 1 if verdict.failed else 0
    except KeyboardInterrupt:
        progress("interrupted: cleaning up")
        code = 130
    except Exception as exc:
        progress(f"the run failed: {type(exc).__name__}: {exc}")
        import traceback

        traceback.print_exc(file=sys.stderr)
        code = 2
    finally:
        logs = run.cleanup(keep_logs=opts.keep_logs or code != 0)
        if logs is not None:
            progress(f"process logs kept in {logs}")
    if result is not None:
        result["logs"] = str(logs) if logs else None
        print(json.dumps(result, indent=2, default=str))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
