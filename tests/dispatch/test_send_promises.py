"""The product's promises when providers misbehave: nothing is sent twice, nothing without
consent, nothing silently lost.

Real databases (SQLite and PostgreSQL), the real channels, respx only at the HTTP boundary with
Twilio and SendGrid. The only double is the rate limiter, whose job here is to wait: it runs a
callback that commits an event through the real ingest or webhook code while the worker waits.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from sqlalchemy import select

from channels.base import ChannelName
from channels.console.send import ConsoleChannel
from channels.links import AnswerLinks
from channels.sendgrid_email.webhooks import raw_sendgrid_events
from channels.twilio_sms.webhooks import raw_twilio_inbound
from dispatch import responses
from dispatch.scheduler import Scheduler
from dispatch.sending import Sender
from ingest.service import ingest_event
from models import Customer, MessageRecord
from tests.conftest import Database
from tests.dispatch.test_sending import (
    BASE,
    NOON,
    SENDGRID_SEND,
    TWILIO_ENV,
    TWILIO_MESSAGES,
    make_sender,
    queued_survey,
    survey,
    twilio_created,
)
from tests.factories import consent_event, erased, order_event, purchase
from wiring.services import GIVE_UP_AFTER

PHONE = "+40721000111"
EMAIL = "ana@example.com"
FROM = TWILIO_ENV["TWILIO_FROM"]
OUR_SID = "SM" + "7" * 32
AFTER_WINDOW = NOON + GIVE_UP_AFTER + timedelta(minutes=1)


class WaitingRateLimiter:
    """A rate limiter that, while it "waits", runs ``during_wait`` once (the next time only)."""

    def __init__(self) -> None:
        self.during_wait: Callable[[], object] | None = None
        self.acquired: list[str] = []

    def acquire(self, channel: str, per_second: float) -> None:
        self.acquired.append(channel)
        callback, self.during_wait = self.during_wait, None
        if callback is not None:
            callback()


def sender_with(db: Database, limiter: WaitingRateLimiter) -> Sender:
    sender = make_sender(db)
    sender.rate_limiter = limiter
    return sender


def form(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode(), keep_blank_values=True)


def listed(
    sid: str,
    body: str,
    *,
    to: str = PHONE,
    sender: str = FROM,
    created: str = "Tue, 24 Nov 2026 10:00:01 +0000",
    direction: str = "outbound-api",
) -> dict[str, Any]:
    return {
        "sid": sid,
        "account_sid": TWILIO_ENV["TWILIO_ACCOUNT_SID"],
        "to": to,
        "from": sender,
        "body": body,
        "status": "delivered",
        "direction": direction,
        "messaging_service_sid": None,
        "date_created": created,
        "date_sent": created,
    }


def page(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"messages": list(messages), "next_page_uri": None, "page": 0, "page_size": 50}


def answer_with(route: Any, answer: httpx.Response | type[Exception]) -> Any:
    if isinstance(answer, httpx.Response):
        return route.mock(return_value=answer)
    return route.mock(side_effect=answer)


def messages_of(db: Database, survey_id: int) -> list[MessageRecord]:
    with db.session() as s:
        return list(
            s.scalars(
                select(MessageRecord)
                .where(MessageRecord.survey_id == survey_id)
                .order_by(MessageRecord.id)
            )
        )


def sms_survey(db: Database, config) -> int:
    return queued_survey(db, config, consent={"sms": True})


def another_sms_survey(db: Database, config, customer_id: str, order_id: str) -> int:
    """A second customer's SMS survey, queued (same phone number and first name as c-1)."""
    event = purchase(order_id, customer_id, at="2026-11-18T10:00:00Z", consent={"sms": True})
    ingest_event(db.factory, event, config, NOON)
    delivered = order_event("delivered", order_id, at="2026-11-19T10:00:00Z")
    ingest_event(db.factory, delivered, config, NOON)
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, NOON)
    assert len(enqueued) == 1
    return enqueued[0]


# -------------------------------------------------------------------------------------------------
# Item 1: an ambiguous provider answer never causes a second message
# -------------------------------------------------------------------------------------------------

TWILIO_AMBIGUOUS: dict[str, httpx.Response] = {
    "502 after creation": httpx.Response(502, text="<html><body>Bad Gateway</body></html>"),
    "500 with a Twilio error": httpx.Response(
        500, json={"code": 20500, "message": "Internal Server Error", "status": 500}
    ),
    "503 as a problem document": httpx.Response(
        503,
        json={
            "type": "https://www.twilio.com/docs/errors/20503",
            "title": "Service Unavailable",
            "status": 503,
            "code": 20503,
        },
    ),
    "408": httpx.Response(408, text="Request Timeout"),
    "201 without a sid": httpx.Response(201, json={"status": "queued", "num_segments": "1"}),
    "201 with an empty body": httpx.Response(201, text=""),
    "201 that is not JSON": httpx.Response(201, text="<html>Created</html>"),
}


@pytest.mark.parametrize("answer", list(TWILIO_AMBIGUOUS.values()), ids=list(TWILIO_AMBIGUOUS))
def test_twilio_ambiguous_answer_stays_sending_and_the_lookup_settles_it(
    db, config, respx_mock, answer
):
    sid = sms_survey(db, config)
    post = answer_with(respx_mock.post(TWILIO_MESSAGES), answer)
    sender = make_sender(db)

    assert sender.send(sid, config, NOON).state == "sending"
    assert survey(db, sid).state == "sending"
    # Nothing brings it back: no retry time in the row, a duplicate queue message does nothing.
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, NOON + timedelta(minutes=30))
    assert enqueued == []
    assert sender.send(sid, config, NOON + timedelta(minutes=1)).state == "sending"
    assert post.call_count == 1

    body = form(post.calls.last.request)["Body"][0]
    lookup = respx_mock.get(TWILIO_MESSAGES).respond(200, json=page(listed(OUR_SID, body)))
    assert sender.settle(sid, config, NOON + timedelta(minutes=5), GIVE_UP_AFTER) == (
        "sent (found by lookup)"
    )
    params = lookup.calls.last.request.url.params
    assert (params["To"], params["From"]) == (PHONE, FROM)
    assert params["DateSent>"] == "2026-11-24T09:59:00Z"  # from just before the send began
    row = survey(db, sid)
    assert (row.state, row.provider, row.provider_message_id) == ("sent", "twilio", OUR_SID)
    assert row.closes_at == row.sent_at + config.survey.response_window
    assert [m.provider_message_id for m in messages_of(db, sid)] == [OUR_SID]
    assert post.call_count == 1


@pytest.mark.parametrize(
    "answer",
    [TWILIO_AMBIGUOUS["502 after creation"], TWILIO_AMBIGUOUS["201 without a sid"]],
    ids=["502", "201 without a sid"],
)
def test_twilio_ambiguous_answer_without_evidence_ends_send_unknown(db, config, respx_mock, answer):
    sid = sms_survey(db, config)
    post = answer_with(respx_mock.post(TWILIO_MESSAGES), answer)
    respx_mock.get(TWILIO_MESSAGES).respond(200, json=page())
    sender = make_sender(db)

    assert sender.send(sid, config, NOON).state == "sending"
    assert sender.settle(sid, config, NOON + timedelta(minutes=5), GIVE_UP_AFTER) == (
        "waiting for a callback"
    )
    assert survey(db, sid).state == "sending"
    assert sender.settle(sid, config, AFTER_WINDOW, GIVE_UP_AFTER) == "send_unknown"
    row = survey(db, sid)
    assert row.state == "send_unknown" and row.provider_message_id is None
    assert post.call_count == 1
    assert messages_of(db, sid) == []


SENDGRID_AMBIGUOUS: dict[str, httpx.Response | type[Exception]] = {
    "502 after acceptance": httpx.Response(502, text="<html>Bad Gateway</html>"),
    "500": httpx.Response(500, json={"errors": [{"message": "internal error"}]}),
    "504": httpx.Response(504, text="Gateway Timeout"),
    "408": httpx.Response(408, text="Request Timeout"),
    "read timeout": httpx.ReadTimeout,
    "dropped connection": httpx.RemoteProtocolError,
}


def sendgrid_event(survey_id: int, name: str, event_id: str, **extra: Any) -> list[Any]:
    payload = {
        "email": EMAIL,
        "event": name,
        "sg_event_id": event_id,
        "sg_message_id": "sgid-1.filterdrecv-5f7d9-1",
        "timestamp": int((NOON + timedelta(seconds=3)).timestamp()),
        "survey_id": str(survey_id),  # our custom_args ride back as top-level keys
        **extra,
    }
    return raw_sendgrid_events(json.dumps([payload]).encode())


@pytest.mark.parametrize("answer", list(SENDGRID_AMBIGUOUS.values()), ids=list(SENDGRID_AMBIGUOUS))
def test_sendgrid_ambiguous_answer_stays_sending_and_an_event_settles_it(
    db, config, respx_mock, answer
):
    sid = queued_survey(db, config)
    post = answer_with(respx_mock.post(SENDGRID_SEND), answer)
    sender = make_sender(db)

    assert sender.send(sid, config, NOON).state == "sending"
    assert sender.send(sid, config, NOON + timedelta(minutes=1)).state == "sending"
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, NOON + timedelta(minutes=30))
    assert enqueued == []
    # No lookup for email: the settle waits for SendGrid's events.
    assert sender.settle(sid, config, NOON + timedelta(minutes=5), GIVE_UP_AFTER) == (
        "waiting for a callback"
    )

    [handled] = responses.ingest_webhooks(
        db.factory,
        config,
        sendgrid_event(sid, "delivered", "ev-1"),
        now=NOON + timedelta(minutes=6),
    )
    assert handled.result == "delivered"
    row = survey(db, sid)
    assert (row.state, row.provider, row.provider_message_id) == ("delivered", "sendgrid", "sgid-1")
    assert sender.settle(sid, config, AFTER_WINDOW, GIVE_UP_AFTER) == "settled already"
    assert post.call_count == 1


@pytest.mark.parametrize(
    "answer",
    [SENDGRID_AMBIGUOUS["502 after acceptance"], SENDGRID_AMBIGUOUS["408"], httpx.ReadTimeout],
    ids=["502", "408", "read timeout"],
)
def test_sendgrid_ambiguous_answer_without_events_ends_send_unknown(db, config, respx_mock, answer):
    sid = queued_survey(db, config)
    post = answer_with(respx_mock.post(SENDGRID_SEND), answer)
    sender = make_sender(db)

    assert sender.send(sid, config, NOON).state == "sending"
    assert sender.settle(
        sid, config, NOON + GIVE_UP_AFTER - timedelta(seconds=1), GIVE_UP_AFTER
    ) == ("waiting for a callback")
    assert sender.settle(sid, config, AFTER_WINDOW, GIVE_UP_AFTER) == "send_unknown"
    assert survey(db, sid).state == "send_unknown"
    assert post.call_count == 1


def test_sendgrid_accepting_without_a_message_id_is_sent_and_its_events_still_apply(
    db, config, respx_mock
):
    sid = queued_survey(db, config)
    post = respx_mock.post(SENDGRID_SEND).respond(200)  # sandbox mode: no X-Message-Id
    sender = make_sender(db)

    assert sender.send(sid, config, NOON).state == "sent"
    row = survey(db, sid)
    assert (row.state, row.provider, row.provider_message_id) == ("sent", "sendgrid", None)
    # The bounce names the message by SendGrid's own id and the survey by our custom arg.
    [handled] = responses.ingest_webhooks(
        db.factory,
        config,
        sendgrid_event(sid, "bounce", "ev-b", type="bounce", reason="550 no such user"),
        now=NOON + timedelta(minutes=6),
    )
    assert handled.result == "undeliverable"
    assert survey(db, sid).state == "undeliverable"
    assert post.call_count == 1


RETRYABLE: dict[str, httpx.Response | type[Exception]] = {
    "429": httpx.Response(
        429,
        headers={"Retry-After": "30"},
        json={"code": 20429, "message": "Too Many Requests", "status": 429},
    ),
    "connection refused": httpx.ConnectError,
    "connect timeout": httpx.ConnectTimeout,
}


@pytest.mark.parametrize("channel", ["sms", "email"])
@pytest.mark.parametrize("answer", list(RETRYABLE.values()), ids=list(RETRYABLE))
def test_answers_that_prove_nothing_was_created_are_retried_once_sent(
    db, config, respx_mock, channel, answer
):
    sid = queued_survey(db, config, consent={channel: True})
    url = TWILIO_MESSAGES if channel == "sms" else SENDGRID_SEND
    accepted = (
        twilio_created(OUR_SID)
        if channel == "sms"
        else httpx.Response(202, headers={"X-Message-Id": "sgid-2"})
    )
    first = answer if isinstance(answer, httpx.Response) else answer("refused")
    post = respx_mock.post(url).mock(side_effect=[first, accepted])
    sender = make_sender(db)

    assert sender.send(sid, config, NOON).state == "scheduled"
    later = NOON + timedelta(minutes=2)
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, later)
    assert enqueued == [sid]
    assert sender.send(sid, config, later).state == "sent"
    assert post.call_count == 2
    assert [m.status for m in messages_of(db, sid)] == ["accepted"]
    Scheduler(db.factory, enqueued.append).tick(config, later + timedelta(days=1))
    assert enqueued == [sid]


def test_a_message_to_the_same_number_with_another_body_is_not_ours(db, config, respx_mock):
    sid = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).respond(502, text="Bad Gateway")
    sender = make_sender(db)
    assert sender.send(sid, config, NOON).state == "sending"
    body = form(post.calls.last.request)["Body"][0]
    respx_mock.get(TWILIO_MESSAGES).respond(
        200,
        json=page(
            listed("SM" + "1" * 32, "Your parcel is on its way"),  # same number, other text
            listed("SM" + "2" * 32, body, sender="+15005550009"),  # our text, another sender
            listed("SM" + "3" * 32, body, created="Tue, 24 Nov 2026 09:30:00 +0000"),  # earlier
            listed("SM" + "4" * 32, body, direction="inbound"),  # not a message we sent
        ),
    )
    assert sender.settle(sid, config, NOON + timedelta(minutes=5), GIVE_UP_AFTER) == (
        "waiting for a callback"
    )
    assert survey(db, sid).state == "sending"
    assert sender.settle(sid, config, AFTER_WINDOW, GIVE_UP_AFTER) == "send_unknown"
    row = survey(db, sid)
    assert (row.state, row.provider_message_id) == ("send_unknown", None)
    assert post.call_count == 1


def test_a_message_already_recorded_for_another_survey_is_not_ours(db, config, respx_mock):
    first = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).mock(
        side_effect=[twilio_created(OUR_SID), httpx.Response(502, text="Bad Gateway")]
    )
    sender = make_sender(db)
    assert sender.send(first, config, NOON).state == "sent"
    second = another_sms_survey(db, config, "c-2", "A-2")
    assert sender.send(second, config, NOON).state == "sending"
    body = form(post.calls.last.request)["Body"][0]
    # Same number, same text: only the sid already recorded for the first survey is listed.
    respx_mock.get(TWILIO_MESSAGES).respond(200, json=page(listed(OUR_SID, body)))
    assert sender.settle(second, config, AFTER_WINDOW, GIVE_UP_AFTER) == "send_unknown"
    assert survey(db, first).provider_message_id == OUR_SID
    assert survey(db, second).provider_message_id is None


LOOKUP_FAILURES: dict[str, httpx.Response | type[Exception]] = {
    "503 with an HTML body": httpx.Response(503, text="<html><h1>Service Unavailable</h1></html>"),
    "500 with a Twilio error": httpx.Response(
        500, json={"code": 20500, "message": "Internal Server Error", "status": 500}
    ),
    "200 that is not JSON": httpx.Response(200, text="<html>maintenance</html>"),
    "401": httpx.Response(401, json={"code": 20003, "message": "Authenticate", "status": 401}),
    "connection refused": httpx.ConnectError,
    "read timeout": httpx.ReadTimeout,
}


@pytest.mark.parametrize("failure", list(LOOKUP_FAILURES.values()), ids=list(LOOKUP_FAILURES))
def test_a_failing_lookup_never_raises_and_the_clock_still_ends_it(db, config, respx_mock, failure):
    sid = sms_survey(db, config)
    post = respx_mock.post(TWILIO_MESSAGES).mock(side_effect=httpx.ReadTimeout)
    lookup = answer_with(respx_mock.get(TWILIO_MESSAGES), failure)
    sender = make_sender(db)
    assert sender.send(sid, config, NOON).state == "sending"

    result = sender.settle(sid, config, NOON + timedelta(minutes=5), GIVE_UP_AFTER)
    assert "waiting" in result
    assert survey(db, sid).state == "sending"
    assert sender.settle(sid, config, AFTER_WINDOW, GIVE_UP_AFTER) == "send_unknown"
    assert survey(db, sid).state == "send_unknown"
    assert lookup.call_count >= 2 and post.call_count == 1


def test_a_failing_lookup_does_not_stop_the_scheduler_pass(db, config, respx_mock):
    first = sms_survey(db, config)
    second = another_sms_survey(db, config, "c-2", "A-2")
    respx_mock.post(TWILIO_MESSAGES).mock(side_effect=httpx.ReadTimeout)
    respx_mock.get(TWILIO_MESSAGES).respond(503, text="<html>Service Unavailable</html>")
    sender = make_sender(db)
    assert sender.send(first, config, NOON).state == "sending"
    assert sender.send(second, config, NOON).state == "sending"
    scheduler = Scheduler(
        db.factory,
        lambda _i: None,
        settle=lambda i, now: sender.settle(i, config, now, GIVE_UP_AFTER),
    )
    scheduler.tick(config, NOON + timedelta(minutes=5))
    scheduler.tick(config, AFTER_WINDOW)
    assert (survey(db, first).state, survey(db, second).state) == ("send_unknown",) * 2


def test_lookups_back_off_while_waiting_for_evidence(db, config, respx_mock):
    sid = sms_survey(db, config)
    respx_mock.post(TWILIO_MESSAGES).respond(502, text="Bad Gateway")
    lookup = respx_mock.get(TWILIO_MESSAGES).respond(200, json=page())
    sender = make_sender(db)
    assert sender.send(sid, config, NOON).state == "sending"
    # A scheduler pass every five seconds for the whole window.
    at = NOON + timedelta(minutes=2)
    while at <= AFTER_WINDOW:
        sender.settle(sid, config, at, GIVE_UP_AFTER)
        at += timedelta(seconds=5)
    assert survey(db, sid).state == "send_unknown"
    assert 3 <= lookup.call_count <= 12, lookup.call_count  # not one per pass (700)


# -------------------------------------------------------------------------------------------------
# Item 3: consent, cancellation and erasure re-checked right before the provider call
# -------------------------------------------------------------------------------------------------


def _revoke(channel: str) -> Callable[[Database, Any], object]:
    def run(db: Database, config: Any) -> object:
        event = consent_event("revoked", "c-1", at="2026-11-24T09:59:30Z", **{channel: False})
        return ingest_event(db.factory, event, config, NOON)

    return run


def _erase(db: Database, config: Any) -> object:
    return ingest_event(db.factory, erased("c-1", at="2026-11-24T09:59:30Z"), config, NOON)


def _cancel(kind: str) -> Callable[[Database, Any], object]:
    def run(db: Database, config: Any) -> object:
        event = order_event(kind, "A-1", at="2026-11-24T09:59:30Z")
        return ingest_event(db.factory, event, config, NOON)

    return run


WHILE_WAITING = {
    "consent revoked": (_revoke, "suppressed"),
    "customer erased": (lambda _channel: _erase, "withdrawn"),
    "order cancelled": (lambda _channel: _cancel("cancelled"), "withdrawn"),
    "order refunded": (lambda _channel: _cancel("refunded"), "withdrawn"),
}


@pytest.mark.parametrize("channel", ["sms", "email"])
@pytest.mark.parametrize("case", list(WHILE_WAITING), ids=list(WHILE_WAITING))
def test_a_change_committed_while_the_rate_limiter_waits_stops_the_invitation(
    db, config, respx_mock, channel, case
):
    sid = queued_survey(db, config, consent={channel: True})
    twilio = respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created(OUR_SID))
    sendgrid = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "sgid-3"})
    make_event, final = WHILE_WAITING[case]
    limiter = WaitingRateLimiter()
    limiter.during_wait = lambda: make_event(channel)(db, config)

    outcome = sender_with(db, limiter).send(sid, config, NOON)

    assert limiter.acquired == [channel]  # the change really landed during the wait
    assert not twilio.called and not sendgrid.called
    assert outcome.state == final
    row = survey(db, sid)
    assert (row.state, row.sent_at, row.provider_message_id) == (final, None, None)
    assert row.final_reason
    assert messages_of(db, sid) == []


def test_a_revocation_while_waiting_falls_back_to_a_consented_channel(db, config, respx_mock):
    sid = queued_survey(db, config, consent={"email": True, "sms": True})
    assert survey(db, sid).channel == "email"
    sendgrid = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "sgid-4"})
    twilio = respx_mock.post(TWILIO_MESSAGES).mock(return_value=twilio_created(OUR_SID))
    limiter = WaitingRateLimiter()
    limiter.during_wait = lambda: _revoke("email")(db, config)
    sender = sender_with(db, limiter)

    outcome = sender.send(sid, config, NOON)
    # The row was still `queued` while the worker waited (it claims only once its slot came),
    # so the revocation itself planned it again on the consented channel.
    assert not sendgrid.called and not twilio.called
    assert "nothing to do" in outcome.detail
    row = survey(db, sid)
    assert (row.state, row.channel) == ("scheduled", "sms")
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, NOON)
    assert enqueued == [sid]
    assert sender.send(sid, config, NOON).state == "sent"
    assert twilio.call_count == 1 and not sendgrid.called
    assert survey(db, sid).channel == "sms"


def _accept_after(
    db: Database, config: Any, accepted: httpx.Response
) -> Callable[[httpx.Request], httpx.Response]:
    def provider(_request: httpx.Request) -> httpx.Response:
        # The customer is erased while the provider is creating the message.
        _erase(db, config)
        return accepted

    return provider


def assert_no_personal_data_kept(db: Database, config: Any, survey_id: int) -> None:
    row = survey(db, survey_id)
    # The message went out: counted as sent, with its window, but nothing links to its copy.
    assert (row.state, row.sent_at) == ("sent", NOON)
    assert row.closes_at == NOON + config.survey.response_window
    assert row.provider_message_id is None and row.next_reminder_at is None
    records = messages_of(db, survey_id)
    assert len(records) == 1
    assert (records[0].provider_message_id, records[0].body) == (None, None)
    with db.session() as s:
        customer = s.get(Customer, row.customer_id)
        assert customer.erased_at is not None and customer.phone is None


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_an_erasure_during_the_provider_call_keeps_no_personal_data(
    db, config, respx_mock, channel
):
    sid = queued_survey(db, config, consent={channel: True})
    if channel == "sms":
        route = respx_mock.post(TWILIO_MESSAGES)
        accepted = twilio_created(OUR_SID)
    else:
        route = respx_mock.post(SENDGRID_SEND)
        accepted = httpx.Response(202, headers={"X-Message-Id": "sgid-5"})
    route.mock(side_effect=_accept_after(db, config, accepted))

    assert make_sender(db).send(sid, config, NOON).state == "sent"
    assert route.call_count == 1
    assert_no_personal_data_kept(db, config, sid)


class ErasingStream(io.StringIO):
    """The console's output; the customer is erased while the message is being printed."""

    def __init__(self, erase: Callable[[], object]) -> None:
        super().__init__()
        self.erase: Callable[[], object] | None = erase

    def write(self, text: str) -> int:
        erase, self.erase = self.erase, None
        if erase is not None:
            erase()
        return super().write(text)


def test_an_erasure_while_the_console_prints_keeps_no_body(db, config):
    sid = queued_survey(db, config)
    stream = ErasingStream(lambda: _erase(db, config))
    sender = Sender(
        db.factory,
        {ChannelName.email: ConsoleChannel(ChannelName.email, stream=stream)},
        AnswerLinks("test-secret-key", BASE),
        BASE,
        rate_limiter=WaitingRateLimiter(),
    )
    assert sender.send(sid, config, NOON).state == "sent"
    assert "survey" in stream.getvalue()
    assert_no_personal_data_kept(db, config, sid)


# -- reminders -------------------------------------------------------------------------------------


def invited(db: Database, config, respx_mock, channel: str) -> tuple[int, Any, Sender, Any]:
    """An invitation accepted by the provider; returns the survey, its route, the sender (with a
    waiting rate limiter) and the limiter."""
    sid = queued_survey(db, config, consent={channel: True})
    if channel == "sms":
        route = respx_mock.post(TWILIO_MESSAGES).mock(
            side_effect=lambda _r: twilio_created("SM" + "5" * 32)
        )
    else:
        route = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "sgid-6"})
    limiter = WaitingRateLimiter()
    sender = sender_with(db, limiter)
    assert sender.send(sid, config, NOON).state == "sent"
    assert route.call_count == 1
    return sid, route, sender, limiter


REMINDER_AT = NOON + timedelta(days=3, minutes=1)


def _answer(channel: str) -> Callable[[Database, Any, int], object]:
    def run(db: Database, config: Any, survey_id: int) -> object:
        if channel == "sms":
            raw = raw_twilio_inbound(
                {"MessageSid": "SMin" + "0" * 30, "From": PHONE, "To": FROM, "Body": "9"}
            )
            return responses.ingest_webhooks(db.factory, config, [raw], now=REMINDER_AT)
        with db.session() as s, s.begin():
            return responses.record_web_score(s, survey_id, 9, config, REMINDER_AT)

    return run


def _opt_out(channel: str) -> Callable[[Database, Any, int], object]:
    def run(db: Database, config: Any, survey_id: int) -> object:
        if channel == "sms":
            raw = raw_twilio_inbound(
                {"MessageSid": "SMin" + "1" * 30, "From": PHONE, "To": FROM, "Body": "STOP"}
            )
            return responses.ingest_webhooks(db.factory, config, [raw], now=REMINDER_AT)
        return responses.ingest_webhooks(
            db.factory, config, sendgrid_event(survey_id, "unsubscribe", "ev-u"), now=REMINDER_AT
        )

    return run


def _in_reminder(make: Callable[[str], Callable[[Database, Any], object]]):
    def for_channel(channel: str) -> Callable[[Database, Any, int], object]:
        inner = make(channel)
        return lambda db, config, _sid: inner(db, config)

    return for_channel


REMINDER_STOPS = {
    "answered": (_answer, "answered"),
    "opted out": (_opt_out, "opted_out"),
    "consent revoked": (_in_reminder(_revoke), None),
    "customer erased": (_in_reminder(lambda _c: _erase), None),
    "order cancelled": (_in_reminder(lambda _c: _cancel("cancelled")), None),
}


@pytest.mark.parametrize("channel", ["sms", "email"])
@pytest.mark.parametrize("case", list(REMINDER_STOPS), ids=list(REMINDER_STOPS))
def test_a_change_while_the_reminder_waits_sends_no_reminder(db, config, respx_mock, channel, case):
    sid, route, sender, limiter = invited(db, config, respx_mock, channel)
    make_event, state = REMINDER_STOPS[case]
    limiter.during_wait = lambda: make_event(channel)(db, config, sid)

    result = sender.send_reminder(sid, 0, config, REMINDER_AT)

    assert "no reminder" in result
    assert limiter.acquired == [channel, channel]
    assert route.call_count == 1  # the invitation only
    assert "reminder" not in [m.kind for m in messages_of(db, sid)]
    row = survey(db, sid)
    assert row.next_reminder_at is None and row.reminders_sent == 0
    if state is not None:
        assert row.state == state


@pytest.mark.parametrize("channel", ["sms", "email"])
@pytest.mark.parametrize("case", ["answered", "opted out"])
def test_no_reminder_after_an_answer_or_an_opt_out(db, config, respx_mock, channel, case):
    sid, route, sender, limiter = invited(db, config, respx_mock, channel)
    make_event, state = REMINDER_STOPS[case]
    make_event(channel)(db, config, sid)
    assert survey(db, sid).state == state

    assert "no reminder" in sender.send_reminder(sid, 0, config, REMINDER_AT)
    assert route.call_count == 1
    assert limiter.acquired == [channel]  # it did not even wait for a slot


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_an_erasure_during_the_reminder_call_keeps_no_personal_data(
    db, config, respx_mock, channel
):
    sid, route, sender, _limiter = invited(db, config, respx_mock, channel)
    accepted = (
        twilio_created("SM" + "6" * 32)
        if channel == "sms"
        else httpx.Response(202, headers={"X-Message-Id": "sgid-7"})
    )
    route.mock(side_effect=_accept_after(db, config, accepted))

    assert sender.send_reminder(sid, 0, config, REMINDER_AT) == "reminder sent"
    assert route.call_count == 2
    reminder = messages_of(db, sid)[-1]
    assert (reminder.kind, reminder.status) == ("reminder", "accepted")
    assert (reminder.provider_message_id, reminder.body) == (None, None)
    assert all(m.provider_message_id is None for m in messages_of(db, sid))
    assert survey(db, sid).provider_message_id is None


def test_a_reminder_goes_when_nothing_changed(db, config, respx_mock):
    sid, route, sender, limiter = invited(db, config, respx_mock, "sms")
    assert sender.send_reminder(sid, 0, config, REMINDER_AT) == "reminder sent"
    assert route.call_count == 2
    assert form(route.calls.last.request)["To"] == [PHONE]
    assert limiter.acquired == ["sms", "sms"]
    assert survey(db, sid).reminders_sent == 1
    assert [m.kind for m in messages_of(db, sid)] == ["invitation", "reminder"]


def test_an_erasure_after_the_invitation_cancels_its_reminders(db, config, respx_mock):
    sid, route, _sender, _limiter = invited(db, config, respx_mock, "email")
    assert survey(db, sid).next_reminder_at is not None
    _erase(db, config)
    assert survey(db, sid).next_reminder_at is None
    reminders: list[tuple[int, int]] = []
    scheduler = Scheduler(
        db.factory, lambda _i: None, enqueue_reminder=lambda i, n: reminders.append((i, n))
    )
    scheduler.tick(config, REMINDER_AT)
    assert reminders == []
    assert route.call_count == 1
