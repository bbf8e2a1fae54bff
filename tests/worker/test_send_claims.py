"""A claim is only half a send: a worker that stops before the provider call gives the survey back
to the queue (nothing was sent, so nothing is lost and nothing is sent twice), and a provider
answer that arrives after the settle window still records the message as sent.

Real databases and channels, respx at the Twilio boundary. The only double is the rate limiter,
whose job here is to wait: while it "waits" it runs the reconciler, as a scheduler would.
"""

from __future__ import annotations

from datetime import timedelta

from models import SurveyState
from tests.worker.test_send_promises import (
    AFTER_WINDOW,
    WaitingRateLimiter,
    messages_of,
    sender_with,
    sms_survey,
)
from tests.worker.test_sending import NOON, TWILIO_MESSAGES, survey, twilio_created
from worker.scheduler import Scheduler
from worker.wiring import GIVE_UP_AFTER

S = SurveyState
LATER = NOON + timedelta(minutes=5)


def test_a_claim_abandoned_before_the_provider_call_is_queued_again_and_sent_once(
    db, config, respx_mock
):
    survey_id = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created())
    limiter = WaitingRateLimiter()
    sender = sender_with(db, limiter)
    # The worker claims the row, then dies while waiting for its slot: simulated by claiming
    # directly, as the first step of send() does, and never going further.
    claimed = sender._claim(survey_id, config, NOON)
    assert not isinstance(claimed, tuple) or survey(db, survey_id).state == S.sending
    assert survey(db, survey_id).sending_at is None  # the provider was never called

    enqueued: list[int] = []
    scheduler = Scheduler(
        db.factory,
        enqueued.append,
        settle=lambda sid, now: sender.settle(sid, config, now, GIVE_UP_AFTER),
    )
    scheduler.tick(config, LATER)
    assert survey(db, survey_id).state == S.queued  # given back, not `send_unknown`
    scheduler.tick(config, LATER + timedelta(minutes=15))
    assert survey_id in enqueued  # the stuck-queue sweep enqueues it again

    sender.send(survey_id, config, LATER + timedelta(minutes=15))
    assert post.call_count == 1
    assert survey(db, survey_id).state == S.sent


def test_a_claim_given_back_while_its_worker_waits_sends_nothing(db, config, respx_mock):
    survey_id = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created())
    limiter = WaitingRateLimiter()
    sender = sender_with(db, limiter)
    # The worker is slow in the rate limiter; the reconciler decides it is gone meanwhile.
    limiter.during_wait = lambda: sender.settle(survey_id, config, LATER, GIVE_UP_AFTER)

    outcome = sender.send(survey_id, config, NOON)

    assert post.call_count == 0
    assert "nothing to do" in outcome.detail
    assert survey(db, survey_id).state == S.queued
    # The requeued message sends it exactly once.
    sender.send(survey_id, config, LATER)
    assert post.call_count == 1


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
