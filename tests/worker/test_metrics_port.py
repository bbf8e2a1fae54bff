"""The worker and the scheduler serve their metrics on a port of their own (`--metrics-port`),
the worker's summed over the processes dramatiq starts; `web --workers 2` serves from two
processes counting in one directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_SECRET_KEY, sqlite_database
from tests.processes import started

pytestmark = pytest.mark.redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    with started(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        yield proc


def answer(proc: subprocess.Popen[str], url: str, **kwargs) -> httpx.Response:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read() if proc.stderr else "exited")
        try:
            return httpx.get(url, timeout=10, **kwargs)
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


@pytest.fixture
def env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    db_path = tmp_path / "metrics.db"
    sqlite_database(db_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NPS_", "PROMETHEUS"))}
    return {
        **base,
        "NPS_DATABASE_URL": f"sqlite:///{db_path}",
        "NPS_CONFIG": str(tmp_path / "none.toml"),
        "NPS_BROKER_URL": redis_url,
        "NPS_SECRET_KEY": TEST_SECRET_KEY,
        "NPS_INGEST_TOKEN": "ingest",
        "NPS_DASHBOARD_PASSWORD": "dash",
    }


def test_the_worker_serves_the_sum_of_its_processes(env):
    port = free_port()
    args = ["worker", "--processes", "2", "--threads", "1", "--metrics-port", str(port)]
    with running(args, {**env, "NPS_METRICS_TOKEN": "scrape"}) as proc:
        url = f"http://127.0.0.1:{port}/metrics"
        assert answer(proc, url).status_code == 401  # the token guards it
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:  # until both worker processes have booted
            text = answer(proc, url, headers={"Authorization": "Bearer scrape"}).text
            if "nps_scheduler_lateness_seconds_count 0.0" in text:
                break
            time.sleep(0.5)
        assert "# TYPE nps_scheduler_lateness_seconds histogram" in text, text[:2000]


def test_the_scheduler_serves_its_metrics(env):
    port = free_port()
    with running(["scheduler", "--interval", "0.5"], {**env, "NPS_METRICS_PORT": str(port)}) as p:
        response = answer(p, f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200
        assert "# TYPE nps_scheduler_lateness_seconds histogram" in response.text
        assert "# TYPE nps_sends_total counter" in response.text


def test_web_with_two_workers_answers_and_counts_in_one_directory(env, tmp_path: Path):
    port = free_port()
    shared = tmp_path / "prometheus"
    shared.mkdir()
    args = ["web", "--workers", "2", "--host", "127.0.0.1", "--port", str(port)]
    with running(args, {**env, "PROMETHEUS_MULTIPROC_DIR": str(shared)}) as proc:
        health = answer(proc, f"http://127.0.0.1:{port}/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        metrics = answer(proc, f"http://127.0.0.1:{port}/metrics", auth=("operator", "dash"))
        assert metrics.status_code == 200
        assert 'nps_surveys{state="scheduled"} 0.0' in metrics.text
        deadline = time.monotonic() + 30
        while len(list(shared.glob("counter_*.db"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(list(shared.glob("counter_*.db"))) >= 2  # one file per web process
        assert 'nps_rate_limited_requests_total{group="events"} 0.0' in metrics.text
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
