"""What the scheduler leaves behind when the broker fails, and rows an older release planned.

A batch is committed ``queued`` before it is enqueued. When Redis refuses the enqueue, those rows
are not lost and do not wait out the stuck-queue lease either: the next pass enqueues them again.
A pending survey with no recorded config version (a row planned before versions were recorded)
is re-planned like any survey of another version.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import timedelta

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import select, update

from dispatch.scheduler import Scheduler
from logs.metrics import SCHEDULER_LATENESS
from models import Survey, SurveyTransition
from tests.conftest import NOW, Database
from tests.seeding import seed_due_surveys
from worker.broker import middleware
from worker.enqueue import batch_sender


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def namespace() -> str:
    return f"nps-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def live_broker(redis_url: str, namespace: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=redis_url, namespace=namespace, middleware=middleware())
    yield broker
    for key in broker.client.scan_iter(f"{namespace}*"):
        broker.client.delete(key)
    broker.close()


def _lateness() -> tuple[float, float]:
    samples = {s.name: s.value for m in SCHEDULER_LATENESS.collect() for s in m.samples}
    return (
        samples["nps_scheduler_lateness_seconds_count"],
        samples["nps_scheduler_lateness_seconds_sum"],
    )


def _actor(broker: RedisBroker) -> dramatiq.Actor[[int], None]:
    @dramatiq.actor(queue_name="sends", broker=broker, actor_name="send_survey")
    def send_survey(survey_id: int) -> None:
        pass

    return send_survey


def test_a_batch_redis_refused_is_enqueued_by_the_next_pass(
    db: Database, config, live_broker: RedisBroker, namespace: str
):
    ids = seed_due_surveys(
        db, 5, NOW - timedelta(minutes=1), config_version=config.schedule_version
    )
    down = RedisBroker(
        url=f"redis://127.0.0.1:{_closed_port()}/0",
        namespace=namespace,
        middleware=middleware(),
        socket_connect_timeout=0.5,
    )
    try:
        scheduler = Scheduler(
            db.factory,
            lambda _i: None,
            enqueue_many=batch_sender(_actor(down)),
            stuck_after=timedelta(minutes=10),
        )
        report = scheduler.tick(config, NOW)
    finally:
        down.close()
    # The same pass's stuck-queue sweep tries them once more, and fails as well.
    assert report.failures == {"claim_due": 1, "requeue_stuck": 1}
    assert report.queued == 0
    with db.session() as s:
        assert set(s.scalars(select(Survey.state))) == {"queued"}

    # Redis is back a few seconds later: the next pass enqueues them, not ten minutes later.
    scheduler.enqueue_many = batch_sender(_actor(live_broker))
    before = _lateness()
    later = scheduler.tick(config, NOW + timedelta(seconds=5))
    assert later.failures == {}
    assert sorted(later.enqueued) == sorted(ids)
    assert live_broker.client.llen(f"{namespace}:sends") == len(ids)
    # Their lateness, never observed when the enqueue failed, is observed now: due to enqueue.
    count, total = _lateness()
    assert (count - before[0], total - before[1]) == (5, 5 * 65.0)
    # Enqueued once: the pass after that finds nothing stuck.
    assert scheduler.tick(config, NOW + timedelta(seconds=10)).requeued == 0
    assert _lateness()[0] == count
    with db.session() as s:
        assert set(s.scalars(select(Survey.state))) == {"queued"}


def test_a_pending_survey_without_a_config_version_is_replanned(db: Database, config):
    ids = seed_due_surveys(db, 4, NOW + timedelta(days=2), config_version=config.schedule_version)
    with db.session() as s, s.begin():
        s.execute(update(Survey).where(Survey.id.in_(ids[:2])).values(config_version=None))
    scheduler = Scheduler(db.factory, lambda _i: None)
    assert scheduler.tick(config, NOW).replanned == 2
    with db.session() as s:
        assert set(s.scalars(select(Survey.config_version))) == {config.schedule_version}
        replanned = set(
            s.scalars(
                select(SurveyTransition.survey_id).where(SurveyTransition.reason == "re-planned")
            )
        )
    assert replanned == set(ids[:2])
    assert scheduler.tick(config, NOW + timedelta(minutes=1)).replanned == 0
