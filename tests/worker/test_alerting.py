"""Acceptance: a detractor answer on the answer page produces exactly one signed alert, retried
after a 500, delivered by the real ``deliver_detractor_alert`` actor in a real dramatiq Worker to
a real local HTTP server; a second sweep or a duplicate message sends nothing; a promoter's
answer and an unset ``[alerts]`` send none."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from dramatiq import Worker
from fastapi.testclient import TestClient
from sqlalchemy import select

from channels.links import AnswerLinks
from dispatch.alert_delivery import verify_signature
from dispatch.alerts import backoff, enqueue_due_alerts
from models import DetractorAlert, utcnow
from tests.conftest import NOW, TEST_SECRET_KEY, Database
from tests.dispatch.test_alerts import Receiver, serve_receiver
from tests.dispatch.test_responses import seed_survey
from web.app import create_app
from worker.alerting import ALERTS_QUEUE, deliver_detractor_alert
from worker.broker import broker

REPO = Path(__file__).resolve().parents[2]
SECRET = "alert-signing-secret-for-acceptance"
BASE = "https://nps.example.test"


@pytest.fixture
def stub_worker():
    broker.flush_all()
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as state:
        yield state


def answer_link(survey_id: int) -> str:
    url = AnswerLinks(TEST_SECRET_KEY, BASE).url_for(survey_id, utcnow() + timedelta(days=10))
    return url.removeprefix(BASE)


def sweep_and_work(db: Database, worker: Worker) -> int:
    """One scheduler pass's alert step, then the worker drains the queue."""
    enqueued = enqueue_due_alerts(db.factory, utcnow(), deliver_detractor_alert.send)
    broker.join(ALERTS_QUEUE)
    worker.join()
    return enqueued


def alert_rows(db: Database) -> list[DetractorAlert]:
    with db.session() as s:
        return list(s.scalars(select(DetractorAlert)))


def test_one_signed_alert_retried_after_a_500(
    db: Database, runtime_for, tmp_path: Path, frozen_clock, stub_worker, receiver: Receiver
):
    config = tmp_path / "nps-dispatch.toml"
    config.write_text(f'[alerts]\ndetractor_webhook = "{receiver.url}"\n')
    runtime = runtime_for(db, NPS_CONFIG=str(config), NPS_ALERT_SIGNING_SECRET=SECRET)
    client = TestClient(create_app(runtime))
    detractor = seed_survey(db, now=NOW)
    promoter = seed_survey(db, now=NOW, customer="c-2")

    assert client.post(answer_link(detractor), data={"score": "3"}).status_code == 200
    assert client.post(answer_link(promoter), data={"score": "10"}).status_code == 200
    assert client.post(answer_link(promoter), data={"comment": "Great"}).status_code == 200
    assert sweep_and_work(db, stub_worker) == 0  # waiting for the follow-up comment
    client.post(answer_link(detractor), data={"comment": "Late and damaged"})

    receiver.statuses = [500]
    assert sweep_and_work(db, stub_worker) == 1
    assert len(receiver.requests) == 1  # answered 500
    assert sweep_and_work(db, stub_worker) == 0  # backing off
    frozen_clock.shift(backoff(1))
    assert sweep_and_work(db, stub_worker) == 1
    assert len(receiver.requests) == 2  # answered 200

    # Nothing more: another pass, a duplicate message, a changed mind.
    [row] = alert_rows(db)
    deliver_detractor_alert.send(row.id)
    broker.join(ALERTS_QUEUE)
    stub_worker.join()
    client.post(answer_link(detractor), data={"score": "2"})
    frozen_clock.shift(timedelta(hours=1))
    assert sweep_and_work(db, stub_worker) == 0
    assert len(receiver.requests) == 2

    [row] = alert_rows(db)
    assert (row.state, row.attempts, row.target) == ("delivered", 2, "webhook")
    failed, delivered = receiver.requests
    assert failed.body == delivered.body
    for request in (failed, delivered):
        assert request.path == "/hooks/nps"
        assert request.headers["Content-Type"] == "application/json"
    signature = delivered.headers["X-NPS-Signature"]
    assert signature.startswith(f"t={int((NOW + backoff(1)).timestamp())},v1=")
    assert verify_signature(SECRET, signature, delivered.body, NOW + backoff(1))
    body = receiver.json_bodies()[1]
    assert (body["score"], body["comment"], body["survey_id"]) == (3, "Late and damaged", detractor)
    assert body["channel"] == "sms" and body["answered_at"] == "2026-11-20T10:00:00Z"


def test_no_alert_without_the_alerts_section(
    db: Database, runtime_for, frozen_clock, stub_worker, receiver: Receiver
):
    runtime = runtime_for(db, NPS_ALERT_SIGNING_SECRET=SECRET)
    client = TestClient(create_app(runtime))
    sid = seed_survey(db, now=NOW)
    assert client.post(answer_link(sid), data={"score": "0"}).status_code == 200
    client.post(answer_link(sid), data={"comment": "Never again"})
    frozen_clock.shift(timedelta(minutes=5))
    assert sweep_and_work(db, stub_worker) == 0
    assert alert_rows(db) == [] and receiver.requests == []


# The production path: the worker process loads ``worker.actors`` only (``nps-dispatch worker``
# runs ``dramatiq worker.actors``), and the scheduler process runs ``Scheduler.tick``: without
# either half, no alert would ever be sent outside these tests.


def test_the_worker_process_registers_the_alert_actor():
    code = (
        "import worker.actors\n"
        "from worker.broker import broker\n"
        "queues = broker.get_declared_queues()\n"
        "print('deliver_detractor_alert' in broker.actors, 'alerts' in queues)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO,
    )
    assert done.stdout.split() == ["True", "True"]


def test_a_scheduler_pass_sends_a_due_alert(
    db: Database, runtime_for, tmp_path: Path, frozen_clock, stub_worker, receiver: Receiver
):
    from worker.scheduling import build_scheduler

    config = tmp_path / "nps-dispatch.toml"
    config.write_text(f'[alerts]\ndetractor_webhook = "{receiver.url}"\n')
    runtime = runtime_for(db, NPS_CONFIG=str(config), NPS_ALERT_SIGNING_SECRET=SECRET)
    client = TestClient(create_app(runtime))
    detractor = seed_survey(db, now=NOW)
    assert client.post(answer_link(detractor), data={"score": "1"}).status_code == 200
    client.post(answer_link(detractor), data={"comment": "Never again"})
    build_scheduler(runtime).tick(runtime.config)
    broker.join(ALERTS_QUEUE)
    stub_worker.join()
    assert len(receiver.requests) == 1
    [row] = alert_rows(db)
    assert row.state == "delivered"
