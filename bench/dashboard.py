"""Benchmark: ``GET /dashboard`` over one million invitations, cold and cached.

    python -m bench.dashboard [--repeat 2] [--hits 20] [--no-seed]

Needs ``NPS_BENCH_POSTGRES_URL`` or ``NPS_TEST_POSTGRES_URL``; runs in its own database,
``nps_bench_dashboard`` on the same server (with NPS_BENCH_POSTGRES_URL its database is used
as given).
It seeds the data of ``bench.report_million`` (one million invitations, 50,000 surveys never
sent, 100,000 skipped purchases, by its own seeding function), gives 40% of the answers a
comment, and then times, through the whole app (every middleware, basic auth, the template):

- **cold**: the dashboard of the whole seeded period with an empty cache (the report by
  channel, the report by week, the histogram and rates, then the comments), best of
  ``--repeat``;
- **cached**: the same page again, data unchanged (the data version, the live comments page and
  the template), median of ``--hits``; and with a comment search;
- the parts of a cold load, each alone: the two reports and the histogram, rates and categories;
- after a survey changes state: the next load (older figures, at once) and the refresh behind it;
- the bare baselines in the same run: the page's own style sheet through the same app (a static
  answer), and ``SELECT count(*), avg(score) FROM surveys``.

It prints one JSON object: seconds, and the ratios to the baselines. Nothing asserts on the
figures, which depend on the machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from bench.databases import bench_url, ensure_database
from bench.report_million import INVITATIONS, rebuild_and_seed
from config import ConfigHolder
from config.settings import Settings
from models.session import make_engine, make_session_factory
from reports.filtered import build_view_report
from reports.filters import make_view
from web.app import create_app
from web.dashboard_data import cache_for, load_extras
from wiring.runtime import Runtime

PASSWORD = "bench-dashboard"
PAGE = "/dashboard?since=2026-08-01&until=2026-11-01"
COMMENTS_SQL = [
    """
    UPDATE surveys
    SET answered_at = sent_at + random() * interval '3 days',
        comment = (ARRAY['Fast delivery, fair price', 'The parcel arrived crushed',
                         'Support never answered', 'Would buy again',
                         'The manual is confusing'])[1 + floor(random() * 5)::int]
    WHERE state IN ('answered', 'partial', 'completed')
    """,
    "UPDATE surveys SET comment = NULL WHERE comment IS NOT NULL AND random() < 0.6",
    "ANALYZE surveys",
]


def seed(engine: Engine) -> float:
    seconds = rebuild_and_seed(engine)
    started = time.perf_counter()
    with engine.begin() as conn:
        for statement in COMMENTS_SQL:
            conn.execute(text(statement))
    return seconds + time.perf_counter() - started


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard")
    parser.add_argument("--repeat", type=int, default=2, help="cold loads (best is kept)")
    parser.add_argument("--hits", type=int, default=20, help="cached loads (median is kept)")
    parser.add_argument("--no-seed", action="store_true", help="reuse the data of a last run")
    args = parser.parse_args(argv)

    url = bench_url("nps_bench_dashboard")
    ensure_database(url)
    engine = make_engine(url)
    seeded = None if args.no_seed else seed(engine)
    settings = Settings.from_env(
        {
            "NPS_DATABASE_URL": url,
            "NPS_DASHBOARD_PASSWORD": PASSWORD,
            "NPS_SECRET_KEY": "bench-secret",
            "NPS_INGEST_TOKEN": "bench-token",
            "NPS_CONFIG": str(Path("/nonexistent/nps-dispatch.toml")),
        }
    )
    runtime = Runtime(
        settings=settings,
        engine=engine,
        factory=make_session_factory(engine),
        config_holder=ConfigHolder(Path(settings.config_path)),
    )
    client = TestClient(create_app(runtime))
    token = base64.b64encode(f"ops:{PASSWORD}".encode()).decode()
    auth = {"Authorization": f"Basic {token}"}
    cache = cache_for(runtime)

    def page(path: str = PAGE) -> None:
        response = client.get(path, headers=auth)
        if response.status_code != 200:
            raise SystemExit(f"{path}: HTTP {response.status_code}")

    def cold() -> None:
        cache.clear()
        page()

    def static() -> None:
        client.get("/dashboard/static/dashboard.css")

    def count() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT count(*), avg(score) FROM surveys")).one()

    static()  # warm the app and its imports
    view = make_view(date(2026, 8, 1), date(2026, 11, 1))
    now = datetime.now(UTC)
    parts = {
        "report_by_channel": timed(
            lambda: build_view_report(runtime.factory, runtime.config, view, "channel", now=now)
        ),
        "report_by_week": timed(
            lambda: build_view_report(
                runtime.factory, runtime.config, view, "week", compare=False, now=now
            )
        ),
        "histogram_rates_categories": timed(lambda: load_extras(runtime, view, now)),
    }
    t_cold = min(timed(cold) for _ in range(args.repeat))
    page()
    t_cached = statistics.median(timed(page) for _ in range(args.hits))
    t_search = statistics.median(
        timed(lambda: page(PAGE + "&q=crushed&band=detractor")) for _ in range(args.hits)
    )
    # New data: the next load shows the figures it has while the new ones are computed behind.
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE surveys SET state_changed_at = now() "
                "WHERE id = (SELECT min(id) FROM surveys)"
            )
        )
    t_changed = timed(page)
    started = time.perf_counter()
    cache.wait_idle()
    t_refresh = time.perf_counter() - started + t_changed
    t_static = statistics.median(timed(static) for _ in range(args.hits))
    t_count = statistics.median(timed(count) for _ in range(max(3, args.repeat)))
    with engine.connect() as conn:
        surveys = conn.execute(text("SELECT count(*) FROM surveys")).scalar()
        version = conn.execute(text("SHOW server_version")).scalar()
    engine.dispose()
    print(
        json.dumps(
            {
                "benchmark": "dashboard",
                "invitations": INVITATIONS,
                "surveys": surveys,
                "postgres": version,
                "cpus": os.cpu_count(),
                "seeded_seconds": None if seeded is None else round(seeded, 1),
                "cold_seconds": round(t_cold, 3),
                "cached_seconds": round(t_cached, 4),
                "cached_search_seconds": round(t_search, 4),
                "after_new_data_seconds": round(t_changed, 4),
                "background_refresh_seconds": round(t_refresh, 1),
                "baseline_static_seconds": round(t_static, 4),
                "baseline_count_seconds": round(t_count, 4),
                "cold_over_count": round(t_cold / t_count, 1),
                "cached_over_static": round(t_cached / t_static, 1),
                "cached_over_count": round(t_cached / t_count, 2),
                "cold_over_cached": round(t_cold / t_cached, 1),
                "cold_parts_seconds": {k: round(v, 2) for k, v in parts.items()},
                "cache": asdict(cache.stats()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
