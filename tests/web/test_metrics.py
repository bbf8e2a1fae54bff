"""`GET /metrics`: counters with `_total` names, zero-state lines, the database gauges (the
oldest due survey's age, every survey state), the build and config versions, and in
multiprocess mode the sum of every process of the host."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from sqlalchemy import update

from models import Survey, SurveyState
from tests.conftest import NOW, TEST_TOKEN, Database
from tests.factories import purchase
from web.app import create_app
from web.metrics import app_registry
from web.ratelimit import RateLimit, RateRule

OPERATOR = ("operator", "test-dashboard")


def sample(text: str, name: str) -> float | None:
    """The value of the sample line ``name`` (with its labels) in an exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_show_counters_zero_states_the_backlog_and_versions(
    sqlite_db: Database, runtime_for, frozen_clock
):
    runtime = runtime_for(sqlite_db)
    client = TestClient(create_app(runtime))
    answered = client.post(
        "/v1/events", json=purchase("MET-1"), headers={"Authorization": f"Bearer {TEST_TOKEN}"}
    )
    assert answered.status_code == 200, answered.text
    with sqlite_db.session() as s:  # the scheduler is 90 s behind on this survey
        s.execute(
            update(Survey).values(
                state=SurveyState.scheduled.value, due_at=NOW - timedelta(seconds=90)
            )
        )
        s.commit()
    text = client.get("/metrics", auth=OPERATOR).text

    for counter in (
        "nps_events",
        "nps_sends",
        "nps_webhook_verification_failures",
        "nps_rate_limited_requests",
        "nps_detractor_alerts",
    ):
        assert f"# TYPE {counter}_total counter" in text or f"# TYPE {counter} counter" in text
    for histogram in ("nps_send_latency_seconds", "nps_scheduler_lateness_seconds"):
        assert f"# TYPE {histogram} histogram" in text
    for group in ("answer-page", "unsubscribe", "events"):  # at zero before any refusal
        assert sample(text, f'nps_rate_limited_requests_total{{group="{group}"}}') is not None
    for state in SurveyState:  # every state, at zero when empty
        assert sample(text, f'nps_surveys{{state="{state.value}"}}') is not None
    assert sample(text, 'nps_surveys{state="failed"}') == 0.0
    assert sample(text, 'nps_surveys{state="scheduled"}') == 1.0
    assert sample(text, "nps_oldest_due_survey_age_seconds") == 90.0
    assert f'nps_config_info{{version="{runtime.config.version}"}} 1.0' in text
    assert 'nps_build_info{version="' in text


def test_no_survey_due_is_an_age_of_zero(sqlite_db: Database, runtime_for, frozen_clock):
    client = TestClient(create_app(runtime_for(sqlite_db)))
    text = client.get("/metrics", auth=OPERATOR).text
    assert sample(text, "nps_oldest_due_survey_age_seconds") == 0.0


def test_a_refused_request_is_counted_by_its_group(sqlite_db: Database, runtime_for):
    app = FastAPI()

    @app.get("/s/{token}")
    def page(token: str) -> dict[str, str]:
        return {"token": token}

    app.add_middleware(RateLimit, rules=(RateRule("metrics-test", "/s/", 0.001, 1),))
    metrics = TestClient(create_app(runtime_for(sqlite_db)))

    def refused() -> float:
        text = metrics.get("/metrics", auth=OPERATOR).text
        return sample(text, 'nps_rate_limited_requests_total{group="metrics-test"}') or 0.0

    before = refused()
    client = TestClient(app, client=("198.51.100.9", 40000))
    assert client.get("/s/a").status_code == 200
    assert client.get("/s/a").status_code == 429
    assert client.get("/s/a").status_code == 429
    assert refused() == before + 2


WRITER = """
import sys
from logs.metrics import RATE_LIMITED, SENDS
RATE_LIMITED.labels(group="answer-page").inc(int(sys.argv[1]))
SENDS.labels(channel="sms", outcome="sent").inc(int(sys.argv[1]))
"""


def test_one_scrape_sums_every_process_of_the_host(
    tmp_path: Path, sqlite_db: Database, runtime_for
):
    shared = tmp_path / "prometheus"
    shared.mkdir()
    for count in ("2", "3"):  # two processes, each counting in its own file
        subprocess.run(
            [sys.executable, "-c", WRITER, count],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)},
            check=True,
            timeout=60,
        )
    assert len(list(shared.glob("counter_*.db"))) == 2

    registry = app_registry(sqlite_db.factory, lambda: "v1", str(shared))
    text = generate_latest(registry).decode()
    assert sample(text, 'nps_rate_limited_requests_total{group="answer-page"}') == 5.0
    assert sample(text, 'nps_sends_total{channel="sms",outcome="sent"}') == 5.0

    runtime = runtime_for(sqlite_db, PROMETHEUS_MULTIPROC_DIR=str(shared))
    scraped = TestClient(create_app(runtime)).get("/metrics", auth=OPERATOR).text
    assert sample(scraped, 'nps_sends_total{channel="sms",outcome="sent"}') == 5.0
    assert sample(scraped, 'nps_surveys{state="failed"}') == 0.0  # the gauges are there too
