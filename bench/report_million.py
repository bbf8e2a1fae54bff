"""Benchmark: the report over one million invitations on PostgreSQL.

    python -m bench.report_million          (or: make bench)

Needs ``NPS_BENCH_POSTGRES_URL`` or ``NPS_TEST_POSTGRES_URL``. The benchmark runs in its own
database, ``nps_bench_report`` on the same server (created when missing; with NPS_BENCH_POSTGRES_URL
its own database name is used as given), never in the test database. It rebuilds the schema
with the real migrations, seeds 1,000,000 invitations (plus 50,000 surveys never sent and
100,000 skipped purchases) with ``INSERT ... SELECT generate_series`` and random covariates in
SQL, then times, each the best of ``--repeat`` runs:

- the bare baseline over the same rows: ``SELECT count(*), avg(score) FROM surveys`` and a bare
  ``GROUP BY`` of the surveys joined to their orders (channel x state, counts only);
- ``build_report`` overall and ``--by channel``;
- the overall report's parts: the one scan of :func:`reports.covariates_query.
  fetch_patterns` (two grouping sets: the counting grid and the model's covariate patterns),
  and the adjustment (propensity model, Hajek estimate, SMDs) overall and per channel.

It prints one JSON object: the figures in seconds, the baselines of the same run, the ratios
(report / bare GROUP BY, report / count), the machine's load average, and how many rows the
model was fitted on for how many invitees (``model_rows``: distinct patterns of the coarse
covariates, outcome and score band) and how many rows the grouping sets returned. It is not a
test: nothing asserts on the figures, which depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, make_url, text

from bench.databases import bench_url, ensure_database
from config import load_config
from migrations.runner import upgrade
from models.session import make_engine, make_session_factory
from reports.build import adjust, bands_of, build_report, tune_session
from reports.covariates_query import fetch_patterns
from reports.query import Period

DATABASE = "nps_bench_report"  # see bench.databases

TARGET_SECONDS = 3.0
BARE_GROUP_BY = (
    "SELECT surveys.channel, surveys.state, count(*) FROM surveys "
    "JOIN orders ON orders.id = surveys.order_id GROUP BY surveys.channel, surveys.state"
)
INVITATIONS = 1_000_000
NOT_SENT = 50_000
SKIPPED = 100_000
CUSTOMERS = 300_000

SEED_SQL = [
    "SELECT setseed(0.20261120)",
    f"""
    INSERT INTO customers (id, external_id, email_status, phone_status, created_at, updated_at)
    SELECT g, 'bench-c-' || g, 'valid', 'missing', now(), now()
    FROM generate_series(1, {CUSTOMERS}) AS g
    """,
    f"""
    INSERT INTO orders (id, external_id, customer_id, purchased_at, total_amount, currency,
                        category, sales_channel, country, previous_orders, is_test, created_at)
    SELECT g, 'bench-o-' || g, 1 + (g % {CUSTOMERS}),
           timestamptz '2026-08-03 00:00+00' + random() * interval '84 days',
           round(exp(2.5 + 3 * random())::numeric, 2), 'EUR',
           (ARRAY['electronics', 'fashion', 'home', 'books', 'toys'])[1 + floor(random() * 5)::int],
           'web',
           (ARRAY['DE', 'RO', 'FR', 'AT', 'PL', 'NL'])[1 + floor(random() * 6)::int],
           CASE WHEN random() < 0.35 THEN 1 + floor(random() * 12)::int ELSE 0 END,
           false, now()
    FROM generate_series(1, {INVITATIONS + NOT_SENT + SKIPPED}) AS g
    """,
    # Invitations: repeat buyers and email answer more often and score higher (a biased sample).
    f"""
    INSERT INTO surveys (order_id, customer_id, channel, state, state_changed_at, planned_at,
                         anchor_kind, anchor_at, delay_seconds, arm, sent_at, delivered_at,
                         score, closes_at, attempts, reminders_sent)
    SELECT id, customer_id, channel,
           CASE WHEN u_resp < p_resp THEN (CASE WHEN u_state < 0.8 THEN 'completed'
                                                ELSE 'answered' END)
                WHEN u_state < 0.05 THEN 'undeliverable'
                WHEN u_state < 0.08 THEN 'opted_out'
                WHEN u_state < 0.10 THEN 'sent'
                WHEN u_state < 0.12 THEN 'delivered'
                ELSE 'no_response' END,
           now(), purchased_at, 'delivered', anchor_at, delay_days * 86400, delay_days || 'd',
           sent_at,
           CASE WHEN u_state >= 0.05 AND u_del < 0.9 THEN sent_at + interval '2 minutes' END,
           CASE WHEN u_resp < p_resp THEN
                CASE WHEN repeat THEN 5 + floor(u_score * 6)::int
                     ELSE floor(u_score * 11)::int END END,
           CASE WHEN u_resp >= p_resp AND u_state >= 0.08 AND u_state < 0.12
                THEN timestamptz '2099-01-01 00:00+00'
                ELSE sent_at + interval '14 days' END,
           1, 0
    FROM (
        SELECT b.*, b.anchor_at + b.delay_days * interval '1 day' + b.u_del * interval '9 hours'
                    AS sent_at,
               0.15 + 0.30 * b.repeat::int + 0.10 * (b.channel = 'email')::int
                    - 0.05 * (b.delay_days = 7)::int AS p_resp
        FROM (
            SELECT o.id, o.customer_id, o.purchased_at, o.previous_orders > 0 AS repeat,
                   o.purchased_at + interval '2 days' + random() * interval '2 days' AS anchor_at,
                   CASE WHEN random() < 0.6 THEN 'email' ELSE 'sms' END AS channel,
                   CASE WHEN random() < 0.5 THEN 2 ELSE 7 END AS delay_days,
                   random() AS u_resp, random() AS u_state, random() AS u_score,
                   random() AS u_del
            FROM orders o WHERE o.id <= {INVITATIONS}
        ) AS b
    ) AS s
    """,
    f"""
    INSERT INTO surveys (order_id, customer_id, channel, state, state_changed_at, planned_at,
                         anchor_kind, attempts, reminders_sent)
    SELECT id, customer_id, 'email',
           (ARRAY['withdrawn', 'suppressed', 'failed', 'send_unknown', 'scheduled',
                  'waiting_anchor'])[1 + (id % 6)::int],
           now(), purchased_at, 'delivered', 0, 0
    FROM orders WHERE id > {INVITATIONS} AND id <= {INVITATIONS + NOT_SENT}
    """,
    f"""
    INSERT INTO skipped_purchases (order_id, reason, created_at)
    SELECT id, (ARRAY['no_consent', 'invalid_contact', 'frequency_cap', 'sampled_out',
                      'cancelled'])[1 + (id % 5)::int], now()
    FROM orders WHERE id > {INVITATIONS + NOT_SENT}
    """,
    *(
        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
        for table in ("customers", "orders", "surveys", "skipped_purchases")
    ),
    "ANALYZE",
]


def rebuild_and_seed(engine: Engine) -> float:
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        for statement in SEED_SQL:
            conn.execute(text(statement))
    return time.perf_counter() - started


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report_million")
    parser.add_argument("--repeat", type=int, default=2, help="runs per timing (best is kept)")
    parser.add_argument("--no-seed", action="store_true", help="reuse the data of a last run")
    args = parser.parse_args(argv)

    url = bench_url(DATABASE)
    ensure_database(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    log = sys.stderr
    print(f"database: {make_url(url).render_as_string(hide_password=True)}", file=log)
    seeded = None
    if not args.no_seed:
        print(f"seeding {INVITATIONS:,} invitations ...", file=log, flush=True)
        seeded = rebuild_and_seed(engine)
    with engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar()
        surveys, sent = conn.execute(
            text("SELECT count(*), count(*) FILTER (WHERE sent_at IS NOT NULL) FROM surveys")
        ).one()

    config = load_config(None)
    bands = bands_of(config)
    now = datetime.now(UTC)
    period = Period()
    # The report's first run pays for importing statsmodels; the benchmark times the report.
    import statsmodels.api  # noqa: F401

    def baseline_count() -> Any:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*), avg(score) FROM surveys")).one()

    def baseline_group_by() -> Any:
        with engine.connect() as conn:
            return conn.execute(text(BARE_GROUP_BY)).all()

    def patterns(by: str | None) -> Callable[[], Any]:
        def run() -> Any:
            with factory() as session:
                tune_session(session)
                keys = ("arm", "delay") if by is None else ("arm", "delay", by)
                return fetch_patterns(session, period, now, bands, keys, by)

        return run

    def report(by: str | None) -> Callable[[], Any]:
        return lambda: build_report(factory, config, by=by, now=now)

    t_count, _ = best_of(args.repeat, baseline_count)
    t_group, _ = best_of(args.repeat, baseline_group_by)
    t_patterns, fetched = best_of(args.repeat, patterns(None))
    table = fetched.covariates
    t_model, adjusted = best_of(args.repeat, lambda: adjust(table, bands))
    by_channel_table = patterns("channel")().covariates
    channels = sorted(set(by_channel_table.segment.tolist()))

    def adjust_channels() -> Any:
        return [adjust(by_channel_table, bands, by_channel_table.in_segment(c)) for c in channels]

    t_model_channels, _ = best_of(args.repeat, adjust_channels)
    t_overall, overall = best_of(args.repeat, report(None))
    t_channel, by_channel = best_of(args.repeat, report("channel"))

    def ratio(a: float, b: float) -> float:
        return round(a / b, 2)

    out = {
        "benchmark": "report_million",
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "postgres": version,
        },
        "data": {
            "surveys": surveys,
            "sent": sent,
            "final_invitations_in_model": table.n,
            "model_rows": table.rows,
            "rows_from_the_group_by": fetched.groups,
            "seeded_seconds": None if seeded is None else round(seeded, 1),
        },
        "seconds": {
            "report_overall": round(t_overall, 3),
            "report_by_channel": round(t_channel, 3),
            "part_group_by_query": round(t_patterns, 3),
            "part_adjustment_overall": round(t_model, 3),
            "part_adjustment_per_channel": round(t_model_channels, 3),
            "baseline_count": round(t_count, 3),
            "baseline_group_by": round(t_group, 3),
        },
        "ratios": {
            "report_overall_x_group_by": ratio(t_overall, t_group),
            "report_by_channel_x_group_by": ratio(t_channel, t_group),
            "group_by_query_x_group_by": ratio(t_patterns, t_group),
            "report_overall_x_count": ratio(t_overall, t_count),
            "report_by_channel_x_count": ratio(t_channel, t_count),
        },
        "target_seconds": TARGET_SECONDS,
        "meets_target": t_overall <= TARGET_SECONDS,
        "estimates": {
            "nps": overall["nps"],
            "nps_ci95": overall["nps_ci95"],
            "adjusted_nps": overall["adjusted"]["nps"],
            "adjusted_ci95": overall["adjusted"]["ci95"],
            "n_eff": overall["adjusted"]["n_eff"],
            "fit": adjusted.fit,
            "channel_segments": [s["key"] for s in by_channel["segments"]],
        },
        "repeat": args.repeat,
    }
    print(json.dumps(out, indent=2))
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
