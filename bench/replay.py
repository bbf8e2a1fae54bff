"""Benchmark: the scheduler's replay of stored delivery receipts, beside a bare psycopg loop.

    python -m bench.replay [--surveys 20000] [--rounds 3]

Needs ``NPS_BENCH_POSTGRES_URL`` (default: database ``nps_bench_replay`` on the server of
``NPS_TEST_POSTGRES_URL``, created when missing). Before every measured turn the schema is
rebuilt with the real migrations and seeded as ``bench.webhooks`` seeds it (``INSERT ... SELECT
generate_series``): ``--surveys`` SMS invitations in state ``sent``, each with its customer,
order and message record carrying a provider message id. Then, for every survey, Twilio's
``delivered`` status callback is stored exactly as the status route stores it: built by the
channel (``raw_twilio_status``, the survey id in the StatusCallback URL's query) and handed to
the route's own intake (``take_delivery_events``) in groups, which leaves a delivery receipt
for later (``handled_at`` null, ``retry_at`` = its arrival: due for the next replay). Every
``--sent-every``-th survey also gets its ``sent`` callback first, as Twilio sends both: the
intake applies that one at once (it only advances the message), so it is stored as handled.

Measured, in ``--rounds`` turns taken alternately (the load of a shared machine drifts, and
each round's ratio is printed), on freshly seeded data each time:

- the product: ``dispatch.responses.replay_unhandled_webhooks`` called as the scheduler calls
  it (``limit=500``, ``budget_seconds``; the pseudonymiser installed as the scheduler's runtime
  does; ``now`` fixed a few minutes after the rows were stored), again and again until a call
  applies nothing, as ``bench.webhooks.apply_later`` does;
- the bare baseline: the least any implementation could do, with psycopg directly. Per batch of
  500 rows: one ``SELECT ... FOR UPDATE SKIP LOCKED`` of the stored rows (their survey id from
  the stored query), one ``UPDATE surveys ... FROM unnest(...)`` moving their surveys to
  ``delivered``, one ``INSERT INTO survey_transitions ... SELECT FROM unnest(...)``, one
  ``UPDATE inbound_events ... FROM unnest(...)`` stamping the rows handled, one commit. It
  reads no payload but the survey id and status, and leaves the message records alone.

For each: rows applied per second (wall clock, from the first call to the last), the
benchmark process's CPU milliseconds per row (``time.process_time``: SQL building, the ORM,
the driver; not the server's), and the SQL statements per row (``before_cursor_execute`` on the
engine, an ``executemany`` counting once) and commits per row. After every turn it checks that
every survey is ``delivered`` with one transition to it and every stored row has ``handled_at``
set. It prints one JSON object with the figures, the ratios to the bare baseline (the best and
the median round), the warnings the product logged (how many, the first three: a run of rows
that could not be applied together, a failed row) and the checks, and exits 1 when a check
failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import psycopg
from sqlalchemy import Engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from bench import databases
from bench.databases import ensure_database
from bench.ingest_common import libpq_url
from bench.webhooks import SECRET, prepare_database, status_form
from channels.base import RawWebhook
from channels.twilio_sms.webhooks import SOURCE_STATUS, raw_twilio_status
from config import OperatorConfig, load_config
from dispatch.responses import REPLAY_MAX_ATTEMPTS, replay_unhandled_webhooks
from dispatch.responses.intake_group import take_delivery_events
from models import privacy, utcnow
from models.privacy import Pseudonymiser
from models.session import make_engine, make_session_factory

LIMIT = 500  # rows per read, the scheduler's own (and per transaction in the bare baseline)
GROUP = 50  # callbacks the status route stores per transaction while seeding
LATER = timedelta(minutes=3)  # the replay's ``now``, after the rows were stored
WARMUP_SURVEYS = 1000


def bench_url() -> str:
    return databases.bench_url("nps_bench_replay")


# --- the data -------------------------------------------------------------------------------------


def status_callback(survey_id: int, status: str) -> RawWebhook:
    """A Twilio status callback as the status route stores it (the survey id in the query)."""
    return raw_twilio_status(status_form(survey_id, status), f"survey_id={survey_id}")


def callbacks(surveys: int, sent_every: int) -> list[RawWebhook]:
    """Each survey's ``delivered`` callback, every ``sent_every``-th survey's ``sent`` before."""
    raws: list[RawWebhook] = []
    for survey_id in range(1, surveys + 1):
        if sent_every and survey_id % sent_every == 0:
            raws.append(status_callback(survey_id, "sent"))
        raws.append(status_callback(survey_id, "delivered"))
    return raws


@dataclass(frozen=True)
class Seeded:
    stored_at: datetime
    figures: dict[str, Any]

    @property
    def left_for_later(self) -> int:
        return int(self.figures["left_for_later"])


def seed(url: str, surveys: int, sent_every: int) -> Seeded:
    """The schema and invitations (``bench.webhooks.prepare_database``), then the callbacks
    stored by the status route's intake, in groups; what was stored, checked."""
    prepare_database(url, surveys)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    stored_at = utcnow()
    raws = callbacks(surveys, sent_every)
    started = time.perf_counter()
    statuses: dict[str, int] = {}
    for start in range(0, len(raws), GROUP):
        for taken in take_delivery_events(factory, raws[start : start + GROUP], now=stored_at):
            statuses[taken.status] = statuses.get(taken.status, 0) + 1
    took = time.perf_counter() - started
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*),"
                " count(*) FILTER (WHERE handled_at IS NULL),"
                " count(*) FILTER (WHERE event_type = 'delivered'),"
                " count(*) FILTER (WHERE event_type = 'delivered' AND handled_at IS NULL"
                "                  AND retry_at <= :now),"
                " count(*) FILTER (WHERE event_type <> 'delivered' AND handled_at IS NOT NULL)"
                " FROM inbound_events"
            ),
            {"now": stored_at + LATER},
        ).one()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()
    rows, waiting, delivered, delivered_due, sent_handled = row
    sent = len(raws) - surveys
    return Seeded(
        stored_at,
        {
            "stored_rows": rows,
            "left_for_later": waiting,
            "delivered_rows": delivered,
            "sent_rows_handled_at_once": sent_handled,
            "intake_outcomes": dict(sorted(statuses.items())),
            "store_s": round(took, 2),
            "as_expected": (
                rows == len(raws)
                and delivered == surveys
                and delivered_due == surveys
                and waiting == surveys
                and sent_handled == sent
            ),
        },
    )


def check(url: str, surveys: int, stored_rows: int) -> dict[str, Any]:
    """After a turn: every survey ``delivered`` with one transition to it, every row handled."""
    engine = make_engine(url)
    with engine.connect() as conn:
        states: dict[str, int] = {
            state: n
            for state, n in conn.execute(
                text("SELECT state, count(*) FROM surveys GROUP BY state ORDER BY state")
            )
        }
        rows, unhandled = conn.execute(
            text("SELECT count(*), count(*) FILTER (WHERE handled_at IS NULL) FROM inbound_events")
        ).one()
        transitions, surveys_moved = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT survey_id) FROM survey_transitions"
                " WHERE from_state = 'sent' AND to_state = 'delivered'"
            )
        ).one()
    engine.dispose()
    return {
        "survey_states": states,
        "rows_unhandled": unhandled,
        "transitions_to_delivered": transitions,
        "ok": (
            states == {"delivered": surveys}
            and rows == stored_rows
            and unhandled == 0
            and transitions == surveys_moved == surveys
        ),
    }


# --- the measured loops ---------------------------------------------------------------------------


@dataclass
class Run:
    """One measured loop. ``passes``: turns of its outer loop (the product's calls of the
    replay, each reading ``LIMIT`` rows at a time within its budget; the bare batches), the
    last one finding nothing."""

    rows: int
    seconds: float
    cpu_seconds: float
    statements: int
    commits: int
    passes: int
    failed: int = 0

    def summary(self) -> dict[str, Any]:
        rows = max(self.rows, 1)
        return {
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows / self.seconds, 1),
            "cpu_ms_per_row": round(self.cpu_seconds / rows * 1000, 4),
            "statements_per_row": round(self.statements / rows, 4),
            "commits_per_row": round(self.commits / rows, 4),
            "statements": self.statements,
            "commits": self.commits,
            "passes": self.passes,
            "failed": self.failed,
        }


class Counter:
    """Statements and commits on an engine: every ``before_cursor_execute`` is one statement
    (an ``executemany`` fires it once)."""

    def __init__(self, engine: Engine) -> None:
        self.statements = 0
        self.commits = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, *_args: Any) -> None:
        self.statements += 1

    def _commit(self, *_args: Any) -> None:
        self.commits += 1

    def reset(self) -> None:
        self.statements = self.commits = 0


class Warnings(logging.Handler):
    """The warnings the product logs while it replays (a run of rows that could not be applied
    together, a failed row): how many, and the first few, for the output."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 3:
            self.first.append(record.getMessage()[:300])


@dataclass
class Product:
    """One engine and session factory for every turn (its compiled-statement cache stays warm,
    as a scheduler's does); its connections are closed after each turn."""

    engine: Engine
    factory: sessionmaker[Session]
    config: OperatorConfig
    counter: Counter
    budget_seconds: float

    @classmethod
    def open(cls, url: str, budget_seconds: float) -> Product:
        privacy.install(Pseudonymiser(SECRET))  # as the scheduler's runtime does
        engine = make_engine(url)
        return cls(
            engine,
            make_session_factory(engine),
            load_config(None),
            Counter(engine),
            budget_seconds,
        )

    def run(self, stored_at: datetime) -> Run:
        with self.engine.connect():  # a pooled connection, opened before the clock starts
            pass
        self.counter.reset()
        now = stored_at + LATER
        applied = failed = passes = 0
        cpu = time.process_time()
        started = time.perf_counter()
        while True:
            report = replay_unhandled_webhooks(
                self.factory,
                self.config,
                now=now,
                limit=LIMIT,
                budget_seconds=self.budget_seconds,
            )
            passes += 1
            applied += report.applied
            failed += report.failed
            if not report.applied and not report.failed:
                break
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        run = Run(applied, elapsed, cpu, self.counter.statements, self.counter.commits, passes)
        run.failed = failed
        self.engine.dispose()  # the schema is rebuilt before the next turn
        return run


BARE_CLAIM = """
SELECT id, payload->>'query', payload->'form'->>'MessageStatus'
FROM inbound_events
WHERE id > %(after)s AND source = %(source)s AND handled_at IS NULL
  AND attempts < %(max_attempts)s AND retry_at <= %(now)s
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

BARE_MOVE = """
UPDATE surveys AS s
SET state = 'delivered', state_changed_at = %(now)s, delivered_at = %(now)s
FROM unnest(%(ids)s::bigint[]) AS v(id)
WHERE s.id = v.id AND s.state = 'sent'
RETURNING s.id
"""

BARE_RECORD = """
INSERT INTO survey_transitions (survey_id, from_state, to_state, at, reason)
SELECT v.id, 'sent', 'delivered', %(now)s, 'twilio delivered'
FROM unnest(%(ids)s::bigint[]) AS v(id)
"""

BARE_STAMP = """
UPDATE inbound_events AS e
SET handled_at = %(now)s, result = v.result, survey_id = v.survey_id, retry_at = NULL
FROM unnest(%(ids)s::bigint[], %(surveys)s::bigint[], %(results)s::varchar[])
     AS v(id, survey_id, result)
WHERE e.id = v.id
"""


def _survey_id(query: str | None) -> int | None:
    values = parse_qs(query or "").get("survey_id", [])
    return int(values[0]) if len(values) == 1 and values[0].isdigit() else None


def run_bare(url: str, stored_at: datetime) -> Run:
    """The bare loop (module docstring), on one connection opened before the clock starts."""
    now = stored_at + LATER
    statements = commits = passes = rows = 0
    with psycopg.connect(libpq_url(url)) as conn:
        cpu = time.process_time()
        started = time.perf_counter()
        after = 0
        while True:
            passes += 1
            claimed = conn.execute(
                BARE_CLAIM,
                {
                    "after": after,
                    "source": SOURCE_STATUS,
                    "max_attempts": REPLAY_MAX_ATTEMPTS,
                    "now": now,
                    "limit": LIMIT,
                },
            ).fetchall()
            statements += 1
            if not claimed:
                conn.commit()
                commits += 1
                break
            ids = [row_id for row_id, _query, _status in claimed]
            surveys = [_survey_id(query) for _id, query, _status in claimed]
            delivered = sorted(
                {
                    survey_id
                    for survey_id, (_id, _query, status) in zip(surveys, claimed, strict=True)
                    if survey_id is not None and status == "delivered"
                }
            )
            moved = {r[0] for r in conn.execute(BARE_MOVE, {"now": now, "ids": delivered})}
            conn.execute(BARE_RECORD, {"now": now, "ids": sorted(moved)})
            results = ["delivered" if s in moved else "no change" for s in surveys]
            conn.execute(
                BARE_STAMP, {"now": now, "ids": ids, "surveys": surveys, "results": results}
            )
            statements += 3
            conn.commit()
            commits += 1
            rows += len(ids)
            after = ids[-1]
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return Run(rows, elapsed, cpu, statements, commits, passes)


# --- the benchmark --------------------------------------------------------------------------------


def turn(
    url: str,
    args: argparse.Namespace,
    who: str,
    measure: Callable[[datetime], Run],
    surveys: int,
) -> tuple[Run, dict[str, Any], dict[str, Any]]:
    """Seed afresh, measure one loop, check what it left."""
    print(f"  {who}: seeding {surveys:,} surveys", file=sys.stderr, flush=True)
    seeded = seed(url, surveys, args.sent_every)
    run = measure(seeded.stored_at)
    checked = check(url, surveys, seeded.figures["stored_rows"])
    checked["all_rows_applied"] = run.rows == seeded.left_for_later and not run.failed
    checked["ok"] = checked["ok"] and checked["all_rows_applied"] and seeded.figures["as_expected"]
    print(
        f"  {who}: {run.rows:,} rows in {run.seconds:.2f} s, check ok: {checked['ok']}",
        file=sys.stderr,
        flush=True,
    )
    return run, seeded.figures, checked


def best_and_tries(runs: list[Run]) -> dict[str, Any]:
    """The fastest turn (noise only ever slows a run), and every turn's rate."""
    best = max(runs, key=lambda r: r.rows / r.seconds)
    return {
        **best.summary(),
        "tries_rows_per_s": [round(r.rows / r.seconds, 1) for r in runs],
        "tries_cpu_ms_per_row": [round(r.cpu_seconds / max(r.rows, 1) * 1000, 4) for r in runs],
    }


def benchmark(url: str, args: argparse.Namespace) -> dict[str, Any]:
    started_at = utcnow()
    clock = time.perf_counter()
    product = Product.open(url, args.budget_seconds)
    warnings = Warnings()
    logging.getLogger("dispatch").addHandler(warnings)
    # An untimed turn of each on a small seed: imports, compiled statements, plans.
    warm = min(WARMUP_SURVEYS, args.surveys)
    print("warming up", file=sys.stderr, flush=True)
    _run, _seeded, warm_product = turn(url, args, "product", product.run, warm)
    _run, _seeded, warm_bare = turn(url, args, "bare", lambda at: run_bare(url, at), warm)
    products: list[Run] = []
    bares: list[Run] = []
    rounds: list[dict[str, Any]] = []
    seeded_figures: dict[str, Any] = {}
    checks: list[bool] = [warm_product["ok"], warm_bare["ok"]]
    for r in range(max(1, args.rounds)):
        print(f"round {r + 1}", file=sys.stderr, flush=True)
        p_run, seeded_figures, p_check = turn(url, args, "product", product.run, args.surveys)
        b_run, _seeded, b_check = turn(
            url, args, "bare", lambda at: run_bare(url, at), args.surveys
        )
        products.append(p_run)
        bares.append(b_run)
        checks += [p_check["ok"], b_check["ok"]]
        p_rate, b_rate = p_run.rows / p_run.seconds, b_run.rows / b_run.seconds
        print(f"  ratio: {p_rate / b_rate:.4f}", file=sys.stderr, flush=True)
        rounds.append(
            {
                "product_rows_per_s": round(p_rate, 1),
                "bare_rows_per_s": round(b_rate, 1),
                "ratio": round(p_rate / b_rate, 4),
                "product_check": p_check,
                "bare_check": b_check,
            }
        )
    product.engine.dispose()
    ratios = [r["ratio"] for r in rounds]
    best_product, best_bare = best_and_tries(products), best_and_tries(bares)
    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs (shared)",
        "database": make_url(url).render_as_string(hide_password=True),
        "surveys": args.surveys,
        "sent_every": args.sent_every,
        "limit": LIMIT,
        "budget_seconds": args.budget_seconds,
        "rounds": len(rounds),
        "seeded": seeded_figures,
        "product": best_product,
        "bare": best_bare,
        "by_round": rounds,
        "ratios": {
            "rows_per_s_vs_bare_best_round": max(ratios),
            "rows_per_s_vs_bare_median_round": round(statistics.median(ratios), 4),
            "rows_per_s_vs_bare_by_round": ratios,
            "rows_per_s_best_vs_best": round(
                best_product["rows_per_s"] / best_bare["rows_per_s"], 4
            ),
            "cpu_ms_per_row_vs_bare": round(
                best_product["cpu_ms_per_row"] / max(best_bare["cpu_ms_per_row"], 1e-6), 2
            ),
            "statements_per_row_vs_bare": round(
                best_product["statements_per_row"] / best_bare["statements_per_row"], 2
            ),
        },
        "product_warnings": {"count": warnings.count, "first": warnings.first},
        "checks": {
            "warmup_ok": warm_product["ok"] and warm_bare["ok"],
            "every_turn_ok": all(checks),
            "ok": all(checks),
        },
        "took_s": round(time.perf_counter() - clock, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__)
    parser.add_argument("--surveys", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="turns of each loop, alternately")
    parser.add_argument(
        "--sent-every",
        type=int,
        default=10,
        help="every n-th survey also gets its `sent` callback before `delivered` (0: none)",
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=2.0,
        help="the replay's time budget per call (the scheduler's default)",
    )
    args = parser.parse_args(argv)
    url = bench_url()
    ensure_database(url)
    result = benchmark(url, args)
    print(json.dumps(result, indent=2))
    return 0 if result["checks"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
