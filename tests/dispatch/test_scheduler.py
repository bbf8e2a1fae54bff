"""The scheduler on real databases: claiming, re-checking, requeueing, concurrency."""

from __future__ import annotations

import contextlib
import io
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from channels.base import ChannelName
from channels.console.send import ConsoleChannel
from channels.links import AnswerLinks
from dispatch.ratelimit import InProcessRateLimiter
from dispatch.scheduler import Scheduler
from dispatch.sending import Sender
from ingest.service import ingest_event
from models import Survey
from tests.conftest import Database
from tests.factories import consent_event, order_event, purchase
from tests.seeding import seed_due_surveys

# A Tuesday at 12:00 in Berlin: inside send hours.
NOON = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)


def states(db: Database) -> Counter[str]:
    with db.session() as s:
        return Counter(s.scalars(select(Survey.state)))


def make_sender(db: Database) -> tuple[Sender, list]:
    email = ConsoleChannel(ChannelName.email, stream=io.StringIO())
    sms = ConsoleChannel(ChannelName.sms, stream=io.StringIO())
    sender = Sender(
        db.factory,
        {ChannelName.email: email, ChannelName.sms: sms},
        AnswerLinks("k", "https://nps.example.test"),
        "https://nps.example.test",
        # Rate limits are tested on their own; here they would only make the test wait.
        rate_limiter=InProcessRateLimiter(sleep=lambda _seconds: None),
    )
    return sender, [email, sms]


def test_due_surveys_are_queued_then_enqueued(db: Database, config):
    ids = seed_due_surveys(
        db, 5, NOON - timedelta(minutes=1), config_version=config.schedule_version
    )
    enqueued: list[int] = []
    report = Scheduler(db.factory, enqueued.append).tick(config, NOON)
    assert sorted(enqueued) == ids and report.queued == 5
    assert states(db) == Counter({"queued": 5})
    # A second pass enqueues nothing more.
    Scheduler(db.factory, enqueued.append).tick(config, NOON + timedelta(seconds=5))
    assert len(enqueued) == 5


def test_not_yet_due_is_left_alone(db: Database, config):
    seed_due_surveys(db, 3, NOON + timedelta(hours=1), config_version=config.schedule_version)
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, NOON)
    assert enqueued == [] and states(db) == Counter({"scheduled": 3})


def test_due_during_quiet_hours_moves_to_the_morning(db: Database, config):
    # Due at 21:00 Berlin while the scheduler was down; now it is 23:30 Berlin.
    night = datetime(2026, 11, 24, 22, 30, tzinfo=UTC)
    [sid] = seed_due_surveys(
        db, 1, night - timedelta(hours=2, minutes=30), config_version=config.schedule_version
    )
    enqueued: list[int] = []
    report = Scheduler(db.factory, enqueued.append).tick(config, night)
    assert enqueued == [] and report.deferred == 1
    with db.session() as s:
        survey = s.get(Survey, sid)
        assert survey.state == "scheduled"
        assert survey.due_at == datetime(2026, 11, 25, 8, 0, tzinfo=UTC)  # 09:00 Berlin


def test_killed_between_claim_and_enqueue_is_enqueued_later_once(db: Database, config):
    [sid] = seed_due_surveys(
        db, 1, NOON - timedelta(minutes=1), config_version=config.schedule_version
    )

    def crash(_survey_id: int) -> None:
        raise KeyboardInterrupt("scheduler killed after its commit")

    with contextlib.suppress(KeyboardInterrupt):
        Scheduler(db.factory, crash).tick(config, NOON)
    assert states(db) == Counter({"queued": 1})
    enqueued: list[int] = []
    scheduler = Scheduler(db.factory, enqueued.append, stuck_after=timedelta(minutes=10))
    scheduler.tick(config, NOON + timedelta(minutes=5))
    assert enqueued == []  # not stuck yet
    scheduler.tick(config, NOON + timedelta(minutes=11))
    assert enqueued == [sid]
    scheduler.tick(config, NOON + timedelta(minutes=12))
    assert enqueued == [sid]  # once
    sender, channels = make_sender(db)
    assert sender.send(sid, config, NOON + timedelta(minutes=12)).state == "sent"
    assert sum(len(c.sent) for c in channels) == 1


def test_revoked_consent_at_claim_time_suppresses(db: Database, config, now):
    ingest_event(db.factory, purchase("S-1", at="2026-11-18T10:00:00Z"), config, now)
    ingest_event(
        db.factory, order_event("delivered", "S-1", at="2026-11-19T10:00:00Z"), config, now
    )
    with db.session() as s:
        survey = s.scalar(select(Survey))
        assert survey.state == "scheduled"
        due = survey.due_at
    # The revocation is recorded but (simulating a race) the survey row was not touched.
    with db.session() as s, s.begin():
        from models import ConsentRecord

        s.add(
            ConsentRecord(
                customer_id=survey.customer_id,
                channel="email",
                granted=False,
                captured_at=now,
                evidence_kind="event",
            )
        )
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, due + timedelta(hours=30))
    assert enqueued == [] and states(db) == Counter({"suppressed": 1})


def test_a_claim_stops_only_its_own_surveys_of_a_customer_whose_consent_is_gone(
    db: Database, config, now
):
    """Another scheduler may hold the customer's other surveys locked and wait on these: the
    claim moves only the surveys it holds; each other one is re-checked when it is due."""
    from models import ConsentRecord

    uncapped = config.model_copy(
        update={"contact": config.contact.model_copy(update={"frequency_cap": timedelta(0)})}
    )
    for order in ("T-1", "T-2"):
        ingest_event(db.factory, purchase(order, at="2026-11-18T10:00:00Z"), uncapped, now)
    ingest_event(
        db.factory, order_event("delivered", "T-1", at="2026-11-19T10:00:00Z"), uncapped, now
    )
    with db.session() as s:
        by_order = {survey.order_id: survey for survey in s.scalars(select(Survey))}
    first, second = sorted(by_order.values(), key=lambda survey: survey.order_id)
    assert (first.state, second.state) == ("scheduled", "waiting_anchor")
    with db.session() as s, s.begin():
        s.add(
            ConsentRecord(
                customer_id=first.customer_id,
                channel="email",
                granted=False,
                captured_at=now,
                evidence_kind="event",
            )
        )
    enqueued: list[int] = []
    report = Scheduler(db.factory, enqueued.append).tick(
        uncapped, first.due_at + timedelta(hours=1)
    )
    assert enqueued == [] and report.stopped == 1
    with db.session() as s:
        assert s.get(Survey, first.id).state == "suppressed"
        assert s.get(Survey, second.id).state == "waiting_anchor"


def test_consent_revoked_between_queueing_and_sending_sends_nothing(db: Database, config, now):
    ingest_event(db.factory, purchase("S-2", at="2026-11-18T10:00:00Z"), config, now)
    ingest_event(
        db.factory, order_event("delivered", "S-2", at="2026-11-19T10:00:00Z"), config, now
    )
    with db.session() as s:
        due = s.scalar(select(Survey.due_at))
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, due)
    assert states(db) == Counter({"queued": 1})
    ingest_event(db.factory, consent_event("revoked", "c-1", email=False), config, now)
    sender, channels = make_sender(db)
    outcome = sender.send(enqueued[0], config, due)
    assert outcome.state == "suppressed"
    assert sum(len(c.sent) for c in channels) == 0


def test_three_schedulers_and_duplicate_messages_send_each_survey_once(pg_db: Database, config):
    """Thousands of due surveys, three schedulers at once, every message delivered twice."""
    n = 2000
    seed_due_surveys(pg_db, n, NOON - timedelta(minutes=1), config_version=config.schedule_version)
    queue: list[int] = []
    lock = threading.Lock()

    def enqueue_twice(survey_id: int) -> None:
        with lock:
            queue.extend([survey_id, survey_id])

    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # surfaced below: a dead thread must fail the test
                errors.append(exc)

        return run

    @guarded
    def run_scheduler() -> None:
        scheduler = Scheduler(pg_db.factory, enqueue_twice, batch_size=100)
        barrier.wait()
        scheduler.tick(config, NOON)

    threads = [threading.Thread(target=run_scheduler) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(queue) == 2 * n
    assert Counter(queue) == Counter({sid: 2 for sid in set(queue)})  # each claimed by one

    sender, channels = make_sender(pg_db)
    work = iter(list(queue))
    work_lock = threading.Lock()

    @guarded
    def run_worker() -> None:
        while True:
            with work_lock:
                survey_id = next(work, None)
            if survey_id is None:
                return
            sender.send(survey_id, config, NOON)

    workers = [threading.Thread(target=run_worker) for _ in range(6)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert errors == []
    sent = [m.survey_id for c in channels for m in c.sent]
    assert len(sent) == n and len(set(sent)) == n
    assert states(pg_db) == Counter({"sent": n})


def test_raw_webhook_payloads_are_emptied_after_retention(db: Database, config):
    from models import InboundEvent

    def stored(key: str, age_days: int, handled: bool) -> None:
        received = NOON - timedelta(days=age_days)
        with db.session() as s, s.begin():
            s.add(
                InboundEvent(
                    source="twilio_inbound",
                    external_id=key,
                    event_type="inbound",
                    payload={"From": "+40721000111", "Body": "9"},
                    received_at=received,
                    handled_at=received if handled else None,
                )
            )

    stored("old", 31, True)
    stored("recent", 29, True)
    # Never applied: its replays were given up days ago, and an erasure cannot find a row that
    # was never matched to a customer, so retention is the only thing that empties it.
    stored("old-unhandled", 31, False)
    stored("recent-unhandled", 29, False)  # may still be replayed
    report = Scheduler(db.factory, lambda _i: None).tick(config, NOON)
    assert report.pruned == 2
    with db.session() as s:
        payloads: dict[str, object] = dict(
            s.execute(select(InboundEvent.external_id, InboundEvent.payload)).all()
        )
    assert payloads["old"] is None and payloads["old-unhandled"] is None
    assert payloads["recent"] is not None and payloads["recent-unhandled"] is not None
