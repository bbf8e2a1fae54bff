"""A claim is only half a send. The worker reserves its rate-limit slot while the survey is still
``queued`` and claims it (``queued -> sending``, re-checked, marked as being sent) only once the
slot has come: a worker that dies while waiting leaves a queued row that the stuck-queue sweep
enqueues again (nothing was sent, so nothing is lost and nothing is sent twice), a backlog of
waits longer than the scheduler's ``sending_timeout`` takes no claim back, and a provider answer
that arrives after the settle window still records the message as sent.

Real databases and channels, respx at the Twilio boundary. The only double is the rate limiter
(or its clock), whose job here is to wait: while it "waits" it runs the scheduler or the
reconciler, as they would run meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from channels.base import ChannelName
from config import RateLimits
from dispatch.ratelimit import InProcessRateLimiter
from dispatch.scheduler import Scheduler
from dispatch.sending import MessageNotBuilt
from ingest.service import ingest_event
from logs.redaction import RedactingFilter, Redactor
from models import Customer, Survey, SurveyState
from tests.dispatch.test_send_promises import (
    AFTER_WINDOW,
    WaitingRateLimiter,
    messages_of,
    sender_with,
    sms_survey,
)
from tests.dispatch.test_sending import NOON, TWILIO_MESSAGES, survey, twilio_created
from tests.factories import order_event, purchase
from wiring.services import GIVE_UP_AFTER

S = SurveyState
LATER = NOON + timedelta(minutes=5)


class WorkerDied(Exception):
    """Raised by the rate limiter: the worker stops while it waits for its slot."""


def _die() -> None:
    raise WorkerDied


def test_a_worker_that_dies_waiting_for_its_slot_leaves_the_survey_queued_and_it_is_sent_once(
    db, config, respx_mock
):
    survey_id = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created())
    limiter = WaitingRateLimiter()
    sender = sender_with(db, limiter)
    limiter.during_wait = _die
    with contextlib.suppress(WorkerDied):
        sender.send(survey_id, config, NOON)
    row = survey(db, survey_id)
    assert (row.state, row.attempts, row.sending_at) == (S.queued, 0, None)

    enqueued: list[int] = []
    scheduler = Scheduler(
        db.factory,
        enqueued.append,
        settle=lambda sid, now: sender.settle(sid, config, now, GIVE_UP_AFTER),
    )
    scheduler.tick(config, LATER)
    assert enqueued == []  # its lease (queued_at, renewed at pick-up) still runs
    scheduler.tick(config, LATER + timedelta(minutes=15))
    assert enqueued == [survey_id]  # the stuck-queue sweep enqueues it again

    sender.send(survey_id, config, LATER + timedelta(minutes=15))
    assert post.call_count == 1
    row = survey(db, survey_id)
    assert (row.state, row.attempts) == (S.sent, 1)


def test_the_reconciler_running_while_a_worker_waits_takes_nothing_back(db, config, respx_mock):
    survey_id = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created())
    limiter = WaitingRateLimiter()
    sender = sender_with(db, limiter)
    enqueued: list[int] = []
    scheduler = Scheduler(
        db.factory,
        enqueued.append,
        settle=lambda sid, now: sender.settle(sid, config, now, GIVE_UP_AFTER),
    )
    # The worker is slow in the rate limiter, longer than the scheduler's sending timeout.
    limiter.during_wait = lambda: scheduler.tick(config, LATER)

    outcome = sender.send(survey_id, config, NOON)

    assert outcome.state == S.sent
    assert post.call_count == 1 and enqueued == []
    row = survey(db, survey_id)
    assert (row.state, row.attempts) == (S.sent, 1)
    assert [m.kind for m in messages_of(db, survey_id)] == ["invitation"]


def test_a_claim_without_its_marker_is_given_back_without_counting_an_attempt(
    db, config, respx_mock
):
    # A row claimed but never marked as being sent (a worker that stopped between the two, or
    # one of an older version that claimed before its rate-limit wait).
    survey_id = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created())
    sender = sender_with(db, WaitingRateLimiter())
    claimed = sender._claim(survey_id, ChannelName.sms, config, NOON, mark=False)
    assert isinstance(claimed, tuple)
    row = survey(db, survey_id)
    assert (row.state, row.attempts, row.sending_at) == (S.sending, 1, None)

    assert sender.settle(survey_id, config, LATER, GIVE_UP_AFTER) == (
        "queued again: the provider was never called"
    )
    row = survey(db, survey_id)
    assert (row.state, row.attempts) == (S.queued, 0)
    sender.send(survey_id, config, LATER)
    assert post.call_count == 1
    row = survey(db, survey_id)
    assert (row.state, row.attempts) == (S.sent, 1)


def test_a_provider_answer_after_the_settle_window_records_the_message_as_sent(
    db, config, respx_mock
):
    survey_id = sms_survey(db, config)
    limiter = WaitingRateLimiter()
    sender = sender_with(db, limiter)
    respx_mock.get(TWILIO_MESSAGES).respond(200, json={"messages": [], "next_page_uri": None})

    def slow_provider(request):
        # While Twilio takes its time, the settle window runs out and finds nothing yet.
        assert sender.settle(survey_id, config, AFTER_WINDOW, GIVE_UP_AFTER) == "send_unknown"
        return twilio_created()

    respx_mock.post(TWILIO_MESSAGES).mock(side_effect=slow_provider)

    sender.send(survey_id, config, NOON)

    row = survey(db, survey_id)
    assert row.state == S.sent and row.provider_message_id
    assert [m.kind for m in messages_of(db, survey_id)] == ["invitation"]


# -- a backlog ------------------------------------------------------------------------------------

BACKLOG = 5
RATE = 0.2  # one SMS every 5 seconds: every wait for a slot is longer than the sending timeout
SENDING_TIMEOUT = timedelta(seconds=1)


def test_a_backlog_with_waits_longer_than_the_sending_timeout_sends_each_survey_once(
    db, config, respx_mock
):
    config = config.model_copy(update={"rate_limits": RateLimits(sms=RATE, email=RATE)})
    for i in range(BACKLOG):
        ingest_event(
            db.factory,
            purchase(f"B-{i}", f"c-{i}", at="2026-11-18T10:00:00Z", consent={"sms": True}),
            config,
            NOON,
        )
        ingest_event(
            db.factory, order_event("delivered", f"B-{i}", at="2026-11-19T10:00:00Z"), config, NOON
        )
    # Twilio answers each survey's first request 429 (nothing created), then accepts it.
    refused: set[int] = set()
    accepted: list[int] = []

    def twilio(request: httpx.Request) -> httpx.Response:
        callback = parse_qs(request.content.decode())["StatusCallback"][0]
        survey_id = int(parse_qs(urlsplit(callback).query)["survey_id"][0])
        if survey_id not in refused:
            refused.add(survey_id)
            return httpx.Response(
                429, headers={"Retry-After": "1"}, json={"code": 20429, "message": "Too Many"}
            )
        accepted.append(survey_id)
        return twilio_created("SM" + f"{survey_id:032d}")

    respx_mock.post(TWILIO_MESSAGES).mock(side_effect=twilio)
    queue: deque[int] = deque()
    clock = [NOON]
    scheduler = Scheduler(
        db.factory,
        queue.append,
        settle=lambda sid, now: sender.settle(sid, config, now, GIVE_UP_AFTER),
        stuck_after=timedelta(seconds=3),
        sending_timeout=SENDING_TIMEOUT,
    )

    def wait(seconds: float) -> None:
        # While the worker waits for its slot, the scheduler passes every half second.
        end = clock[0] + timedelta(seconds=seconds)
        while clock[0] < end:
            clock[0] = min(clock[0] + timedelta(seconds=0.5), end)
            scheduler.tick(config, clock[0])

    def seconds() -> float:
        return float((clock[0] - NOON).total_seconds())

    sender = sender_with(db, WaitingRateLimiter())
    sender.rate_limiter = InProcessRateLimiter(clock=seconds, sleep=wait)
    scheduler.tick(config, clock[0])
    for _ in range(200):  # one worker draining the queue; the scheduler runs in its waits
        if queue:
            outcome = sender.send(queue.popleft(), config, clock[0])
            assert outcome.state != S.failed, outcome.detail
        else:
            wait(1.0)
        if len(accepted) == BACKLOG and not queue:
            break

    with db.session() as s:
        rows = s.execute(select(Survey.id, Survey.state, Survey.attempts)).all()
    assert sorted(accepted) == sorted(r.id for r in rows)  # each one accepted exactly once
    assert {r.state for r in rows} == {S.sent}
    assert {r.attempts for r in rows} == {2}  # the 429 and the send: no give-back counted


def test_a_claim_whose_message_cannot_be_built_is_given_back_and_sent_once_repaired(
    db, config, respx_mock, caplog
):
    # A customer row that says its phone is valid but holds none: the claim's checks pass, the
    # message cannot be built. The claim goes back to `queued`, no attempt counted, no marker.
    survey_id = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created())
    with db.session() as s, s.begin():
        customer = s.get(Customer, survey(db, survey_id).customer_id)
        phone, customer.phone = customer.phone, None
    sender = sender_with(db, WaitingRateLimiter())
    unbuilt = {"channel": "sms", "outcome": "unbuilt"}
    before = REGISTRY.get_sample_value("nps_sends_total", unbuilt) or 0.0

    with pytest.raises(MessageNotBuilt), caplog.at_level(logging.INFO):
        sender.send(survey_id, config, NOON)

    assert not post.called
    # Counted and logged for the operator, without the customer's data.
    assert REGISTRY.get_sample_value("nps_sends_total", unbuilt) == before + 1
    [line] = [r.getMessage() for r in caplog.records if "could not be built" in r.getMessage()]
    assert line == (
        f"survey {survey_id}: message could not be built (SendInvariantError); back in queued"
    )
    row = survey(db, survey_id)
    assert (row.state, row.attempts, row.sending_at) == (S.queued, 0, None)
    assert messages_of(db, survey_id) == []
    # Nothing is left for the reconciler: the row is not `sending`.
    assert sender.settle(survey_id, config, LATER, GIVE_UP_AFTER) == "settled already"

    with db.session() as s, s.begin():
        s.get(Customer, row.customer_id).phone = phone
    assert sender.send(survey_id, config, LATER).state == S.sent
    assert post.call_count == 1
    row = survey(db, survey_id)
    assert (row.state, row.attempts) == (S.sent, 1)
    assert [m.kind for m in messages_of(db, survey_id)] == ["invitation"]


def test_a_sweep_that_enqueues_a_waiting_survey_again_sends_it_once(db, config, respx_mock):
    # Worker A picks the survey up and waits for its slot so long that the stuck-queue sweep
    # enqueues it again, and worker B takes that message and sends it while A still waits.
    survey_id = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created())
    late = LATER + timedelta(minutes=15)
    enqueued: list[int] = []
    scheduler = Scheduler(db.factory, enqueued.append)
    worker_b = sender_with(db, WaitingRateLimiter())
    outcomes: list[str] = []

    def meanwhile() -> None:
        scheduler.tick(config, late)
        assert enqueued == [survey_id]
        outcomes.append(worker_b.send(survey_id, config, late).state)

    limiter = WaitingRateLimiter()
    limiter.during_wait = meanwhile
    outcome = sender_with(db, limiter).send(survey_id, config, NOON)

    assert outcomes == [S.sent]
    assert "nothing to do" in outcome.detail
    assert post.call_count == 1
    row = survey(db, survey_id)
    assert (row.state, row.attempts) == (S.sent, 1)
    assert [m.kind for m in messages_of(db, survey_id)] == ["invitation"]


def test_an_unbuilt_message_logged_by_the_worker_does_not_quote_the_build_error(
    db, config, monkeypatch
):
    """dramatiq logs a failed message with its exception: the error raised for a message that
    cannot be built does not carry the build error, which can quote a customer's name."""
    survey_id = sms_survey(db, config)
    sender = sender_with(db, WaitingRateLimiter())

    def broken(*a, **k):
        raise KeyError("greeting for Jane Doe-Smith")

    monkeypatch.setattr("dispatch.sending.sender.build_message", broken)
    with pytest.raises(MessageNotBuilt) as caught:
        sender.send(survey_id, config, NOON)
    record = logging.LogRecord(
        "dramatiq.worker.WorkerThread",
        logging.ERROR,
        __file__,
        1,
        "Failed to process message %s with unhandled exception.",
        ("send_survey(1)",),
        (type(caught.value), caught.value, caught.value.__traceback__),
    )
    RedactingFilter(Redactor()).filter(record)
    assert "Jane Doe-Smith" not in (record.exc_text or "")
