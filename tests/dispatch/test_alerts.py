"""Detractor alerts on real databases: the outbox row written with the score, the sweep, the
claim, one signed webhook attempt at a time against a real local HTTP server, and email at the
SendGrid boundary."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, select

from channels.base import ChannelName
from channels.console.send import ConsoleChannel
from channels.sendgrid_email.send import SendGridEmailChannel
from config import AlertsConfig, OperatorConfig
from dispatch import alerts
from dispatch.alert_delivery import deliver, signature_header, verify_signature
from dispatch.responses import record_web_comment, record_web_score
from ingest.service import ingest_event
from models import DetractorAlert
from tests.conftest import Database
from tests.dispatch.test_responses import seed_survey
from tests.factories import erased

SECRET = "alert-signing-secret-for-tests"


# --- a real receiver ------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP server answering with ``statuses`` in turn (then 200), keeping requests."""

    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    url: str = ""

    def json_bodies(self) -> list[dict[str, object]]:
        return [json.loads(r.body) for r in self.requests]


@contextmanager
def serve_receiver() -> Iterator[Receiver]:
    """A :class:`Receiver` on a free loopback port, for the time of the ``with`` block."""
    state = Receiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.requests.append(Received(self.path, dict(self.headers.items()), body))
                status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/nps"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as state:
        yield state


def with_alerts(config: OperatorConfig, **targets: str) -> OperatorConfig:
    return config.model_copy(update={"alerts": AlertsConfig(**targets)})


def alerts_of(db: Database) -> list[DetractorAlert]:
    with db.session() as s:
        return list(s.scalars(select(DetractorAlert).order_by(DetractorAlert.id)))


def score(db: Database, sid: int, value: int, config: OperatorConfig, now: datetime) -> None:
    with db.session() as s, s.begin():
        assert record_web_score(s, sid, value, config, now).status in ("recorded", "unchanged")


def comment(db: Database, sid: int, text: str, now: datetime) -> None:
    with db.session() as s, s.begin():
        record_web_comment(s, sid, text, now)


def sweep(db: Database, now: datetime) -> list[int]:
    enqueued: list[int] = []
    alerts.enqueue_due_alerts(db.factory, now, enqueued.append)
    return enqueued


def run(db: Database, alert_id: int, config: OperatorConfig, now: datetime, **kw: object) -> str:
    with httpx.Client(timeout=5) as http:
        options: dict[str, object] = {"secret": SECRET, "http": http, "email_channel": None}
        options.update(kw)
        return deliver(db.factory, alert_id, config, clock=lambda: now, **options)


# --- the outbox row ---------------------------------------------------------------------------


def test_a_detractor_score_writes_one_row_per_target_due_after_the_comment_wait(
    db: Database, config, now
):
    config = with_alerts(
        config, detractor_webhook="https://hooks.example.com/nps", detractor_email="cx@example.com"
    )
    sid = seed_survey(db, now=now)
    score(db, sid, 3, config, now)
    rows = alerts_of(db)
    assert [(r.survey_id, r.target, r.state) for r in rows] == [
        (sid, "webhook", "pending"),
        (sid, "email", "pending"),
    ]
    assert {r.due_at for r in rows} == {now + alerts.COMMENT_WAIT}
    assert sweep(db, now) == []
    # The follow-up comment makes it due at once.
    comment(db, sid, "slow delivery", now + timedelta(seconds=5))
    assert {r.due_at for r in alerts_of(db)} == {now + timedelta(seconds=5)}
    assert sorted(sweep(db, now + timedelta(seconds=5))) == [r.id for r in rows]


@pytest.mark.parametrize("value", [7, 8, 9, 10])
def test_passive_and_promoter_scores_write_none(db: Database, config, now, value):
    config = with_alerts(config, detractor_webhook="https://hooks.example.com/nps")
    score(db, seed_survey(db, now=now), value, config, now)
    assert alerts_of(db) == []


def test_no_alerts_table_without_targets(db: Database, config, now):
    score(db, seed_survey(db, now=now), 0, config, now)
    assert alerts_of(db) == []
    assert sweep(db, now + timedelta(hours=1)) == []


def test_a_changed_or_repeated_score_never_makes_a_second_alert(db: Database, config, now):
    config = with_alerts(config, detractor_webhook="https://hooks.example.com/nps")
    sid = seed_survey(db, now=now)
    score(db, sid, 3, config, now)
    score(db, sid, 5, config, now + timedelta(seconds=1))  # still a detractor
    score(db, sid, 5, config, now + timedelta(seconds=2))  # the same again
    [row] = alerts_of(db)
    assert row.state == "pending"
    # A change of mind to a passive before delivery cancels it ...
    score(db, sid, 8, config, now + timedelta(seconds=3))
    [row] = alerts_of(db)
    assert row.state == "cancelled" and row.last_error == alerts.SCORE_CHANGED
    assert sweep(db, now + timedelta(minutes=5)) == []
    # ... and back to a detractor, the same alert is pending again.
    score(db, sid, 2, config, now + timedelta(minutes=6))
    [row] = alerts_of(db)
    assert row.state == "pending" and row.due_at == now + timedelta(minutes=6, seconds=30)


def test_a_score_with_its_comment_is_due_at_once(db: Database, config, now):
    from dispatch.responses.answers import _set_score
    from models import Survey

    config = with_alerts(config, detractor_webhook="https://hooks.example.com/nps")
    sid = seed_survey(db, now=now)
    with db.session() as s, s.begin():
        survey = s.get(Survey, sid)
        assert survey is not None
        assert _set_score(s, survey, 4, "sms", config, now, comment="broken") == "recorded"
    [row] = alerts_of(db)
    assert row.due_at == now


def test_sms_replies_write_the_alert_too(db: Database, config, now, frozen_clock):
    from tests.dispatch.test_responses import sms

    config = with_alerts(config, detractor_webhook="https://hooks.example.com/nps")
    sid = seed_survey(db, now=now)
    assert sms(db, config, "4").status == "applied"
    [row] = alerts_of(db)
    assert (row.survey_id, row.due_at) == (sid, now + alerts.COMMENT_WAIT)
    assert sms(db, config, "9").status == "applied"  # a changed mind, before delivery
    assert alerts_of(db)[0].state == "cancelled"
    frozen_clock.shift(timedelta(seconds=5))
    assert sms(db, config, "3").status == "applied"
    frozen_clock.shift(timedelta(seconds=5))
    assert sms(db, config, "the courier was rude").status == "applied"
    [row] = alerts_of(db)
    assert (row.state, row.due_at) == ("pending", now + timedelta(seconds=10))


# --- sweep, claim, webhook --------------------------------------------------------------------


def counted(target: str, outcome: str) -> float:
    labels = {"target": target, "outcome": outcome}
    return REGISTRY.get_sample_value("nps_detractor_alerts_total", labels) or 0.0


def test_webhook_alert_signed_retried_after_a_500_and_sent_once(
    db: Database, config, now, receiver: Receiver, caplog
):
    caplog.set_level(logging.DEBUG)
    before = {o: counted("webhook", o) for o in ("retry", "delivered")}
    config = with_alerts(config, detractor_webhook=receiver.url)
    sid = seed_survey(db, now=now)
    score(db, sid, 2, config, now)
    comment(db, sid, "Parcel arrived broken", now)
    receiver.statuses = [500]
    [alert_id] = sweep(db, now)
    assert sweep(db, now) == []  # queued: not enqueued twice
    assert run(db, alert_id, config, now) == "retry"
    [row] = alerts_of(db)
    assert (row.state, row.attempts, row.last_error) == ("pending", 1, "HTTP 500")
    assert row.due_at == now + alerts.backoff(1)
    assert sweep(db, now + timedelta(seconds=10)) == []  # backing off
    later = now + alerts.backoff(1)
    assert sweep(db, later) == [alert_id]
    assert run(db, alert_id, config, later) == "delivered"
    # A duplicate message, and later sweeps, send nothing.
    assert run(db, alert_id, config, later) == "skipped"
    assert sweep(db, later + timedelta(hours=2)) == []
    [row] = alerts_of(db)
    assert (row.state, row.attempts, row.finished_at) == ("delivered", 2, later)
    assert len(receiver.requests) == 2
    first, second = receiver.requests
    assert first.body == second.body  # the same alert, recognisable by its id
    assert second.headers["X-NPS-Alert-Id"] == str(alert_id)
    assert verify_signature(SECRET, second.headers["X-NPS-Signature"], second.body, later)
    assert not verify_signature("another", second.headers["X-NPS-Signature"], second.body, later)
    body = json.loads(second.body)
    assert body == {
        "type": "detractor_alert",
        "id": alert_id,
        "survey_id": sid,
        "order_id": body["order_id"],
        "channel": "sms",
        "score": 2,
        "band": "detractor",
        "comment": "Parcel arrived broken",
        "answered_at": "2026-11-20T10:00:00Z",
        "shop": "Example Shop",
    }
    assert body["order_id"].startswith("O-")
    assert counted("webhook", "retry") == before["retry"] + 1
    assert counted("webhook", "delivered") == before["delivered"] + 1
    # Neither the comment nor the hook's path is logged (httpx's request line included).
    assert "HTTP Request: POST http://127.0.0.1/[path hidden]" in caplog.text
    assert "Parcel" not in caplog.text and "/hooks/nps" not in caplog.text


def test_a_signature_header_with_other_than_ascii_is_refused_not_raised(now):
    t = int(now.timestamp())
    body = b'{"a":1}'
    assert not verify_signature("s3cret", f"t={t},v1=\u00e9t\u00e9", body, now)
    assert not verify_signature("s3cret", "t=\u0661\u0662,v1=00", body, now)


def test_a_retry_after_date_is_honoured(db: Database, config, now):
    config = with_alerts(config, detractor_webhook="https://hooks.example.com/nps")
    score(db, seed_survey(db, now=now), 0, config, now)
    at = now + alerts.COMMENT_WAIT
    [alert_id] = sweep(db, at)
    until = at + timedelta(minutes=20)

    def busy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": format_datetime(until, usegmt=True)})

    with httpx.Client(transport=httpx.MockTransport(busy)) as http:
        assert run(db, alert_id, config, at, http=http) == "retry"
    [row] = alerts_of(db)
    assert (row.state, row.due_at, row.last_error) == ("pending", until, "HTTP 503")


def test_a_cancellation_by_a_changed_score_is_counted(db: Database, config, now):
    config = with_alerts(
        config, detractor_webhook="https://hooks.example.com/nps", detractor_email="cx@example.com"
    )
    before = {t: counted(t, "cancelled") for t in ("webhook", "email")}
    sid = seed_survey(db, now=now)
    score(db, sid, 3, config, now)
    score(db, sid, 9, config, now + timedelta(seconds=1))
    score(db, sid, 10, config, now + timedelta(seconds=2))  # nothing left to cancel
    assert {t: counted(t, "cancelled") - before[t] for t in before} == {"webhook": 1, "email": 1}


def test_signature_format_and_freshness(now):
    body = b'{"a":1}'
    t = int(now.timestamp())
    header = signature_header("s3cret", t, body)
    import hashlib
    import hmac

    expected = hmac.new(b"s3cret", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert header == f"t={t},v1={expected}"
    assert verify_signature("s3cret", header, body, now + timedelta(minutes=4))
    assert not verify_signature("s3cret", header, body, now + timedelta(minutes=6))
    assert not verify_signature("s3cret", header, body + b" ", now)
    assert not verify_signature("s3cret", "v1=" + expected, body, now)


def test_a_4xx_fails_for_good_and_attempts_are_bounded(
    db: Database, config, now, receiver: Receiver
):
    config = with_alerts(config, detractor_webhook=receiver.url)
    permanent, flaky = seed_survey(db, now=now), seed_survey(db, now=now)
    score(db, permanent, 1, config, now)
    score(db, flaky, 1, config, now)
    at = now + alerts.COMMENT_WAIT
    first, second = sweep(db, at)
    receiver.statuses = [410]
    assert run(db, first, config, at) == "failed"
    outcomes = []
    for _ in range(alerts.MAX_ATTEMPTS):
        receiver.statuses = [503]
        at += timedelta(hours=1)
        assert sweep(db, at) == [second]
        outcomes.append(run(db, second, config, at))
    assert outcomes == ["retry"] * (alerts.MAX_ATTEMPTS - 1) + ["failed"]
    rows = {r.id: r for r in alerts_of(db)}
    assert (rows[first].state, rows[first].attempts, rows[first].last_error) == (
        "failed",
        1,
        "HTTP 410",
    )
    assert rows[second].state == "failed" and rows[second].attempts == alerts.MAX_ATTEMPTS
    assert "gave up after 8 attempts" in (rows[second].last_error or "")
    assert sweep(db, at + timedelta(days=1)) == []


def test_unsigned_alerts_are_not_sent(db: Database, config, now, receiver: Receiver):
    config = with_alerts(config, detractor_webhook=receiver.url)
    score(db, seed_survey(db, now=now), 0, config, now)
    [alert_id] = sweep(db, now + alerts.COMMENT_WAIT)
    assert run(db, alert_id, config, now + alerts.COMMENT_WAIT, secret=None) == "retry"
    assert receiver.requests == []
    [row] = alerts_of(db)
    assert row.last_error == "NPS_ALERT_SIGNING_SECRET not set"


def test_a_receiver_whose_answer_never_ends_does_not_hold_the_worker(db: Database, config, now):
    """A 200 followed by a body that never ends: the status is all an alert needs, so the
    attempt ends (a worker thread held by one bad hook would hold up every other actor)."""
    stop = threading.Event()

    class Endless(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with contextlib.suppress(OSError):  # until the client hangs up
                while not stop.wait(0.05):
                    self.wfile.write(b"1\r\nx\r\n")
                    self.wfile.flush()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    config = with_alerts(config, detractor_webhook=url)
    score(db, seed_survey(db, now=now), 0, config, now)
    at = now + alerts.COMMENT_WAIT
    [alert_id] = sweep(db, at)
    outcome: list[str] = []
    attempt = threading.Thread(target=lambda: outcome.append(run(db, alert_id, config, at)))
    try:
        attempt.start()
        attempt.join(timeout=60)  # a bound for a hang, not a measure: the attempt takes ms
        assert outcome == ["delivered"]
    finally:
        stop.set()
        attempt.join(timeout=8)
        server.shutdown()
        server.server_close()


def test_a_timeout_is_retried(db: Database, config, now):
    config = with_alerts(config, detractor_webhook="https://hooks.example.com/nps")
    score(db, seed_survey(db, now=now), 0, config, now)
    [alert_id] = sweep(db, now + alerts.COMMENT_WAIT)

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with httpx.Client(transport=httpx.MockTransport(timeout)) as http:
        outcome = deliver(
            db.factory,
            alert_id,
            config,
            secret=SECRET,
            http=http,
            email_channel=None,
            clock=lambda: now + alerts.COMMENT_WAIT,
        )
    assert outcome == "retry"
    assert alerts_of(db)[0].last_error == "ReadTimeout"


def test_a_score_changed_after_queueing_is_not_sent(db: Database, config, now, receiver):
    config = with_alerts(config, detractor_webhook=receiver.url)
    sid = seed_survey(db, now=now)
    score(db, sid, 4, config, now)
    [alert_id] = sweep(db, now + alerts.COMMENT_WAIT)
    score(db, sid, 10, config, now + alerts.COMMENT_WAIT)
    assert run(db, alert_id, config, now + alerts.COMMENT_WAIT) == "skipped"
    assert receiver.requests == [] and alerts_of(db)[0].state == "cancelled"


def test_a_target_removed_from_the_config_cancels_its_alert(db, config, now, receiver):
    with_hook = with_alerts(config, detractor_webhook=receiver.url)
    score(db, seed_survey(db, now=now), 4, with_hook, now)
    [alert_id] = sweep(db, now + alerts.COMMENT_WAIT)
    assert run(db, alert_id, config, now + alerts.COMMENT_WAIT) == "cancelled"
    assert receiver.requests == []


def test_lost_messages_and_dead_workers_are_recovered(db: Database, config, now, receiver):
    config = with_alerts(config, detractor_webhook=receiver.url, detractor_email="cx@example.com")
    score(db, seed_survey(db, now=now), 4, config, now)
    at = now + alerts.COMMENT_WAIT
    hook, mail = sweep(db, at)
    # Both messages lost: enqueued again once they have waited QUEUED_STALE.
    assert sweep(db, at + timedelta(seconds=30)) == []
    at += alerts.QUEUED_STALE
    assert sorted(sweep(db, at)) == [hook, mail]
    # Both claimed by a worker that then died mid-delivery.
    with db.session() as s, s.begin():
        assert alerts.claim(s, hook, at) is not None and alerts.claim(s, mail, at) is not None
        assert alerts.claim(s, hook, at) is None  # a duplicate message claims nothing
    at += alerts.DELIVERING_STALE
    assert sweep(db, at) == [hook]  # a webhook is tried again (its id lets the receiver dedupe)
    rows = {r.id: r for r in alerts_of(db)}
    assert rows[mail].state == "failed" and "not sent again" in (rows[mail].last_error or "")
    assert run(db, hook, config, at) == "delivered"
    assert len(receiver.requests) == 1


def test_a_broker_down_at_enqueue_loses_nothing(db: Database, config, now):
    config = with_alerts(config, detractor_webhook="https://hooks.example.com/nps")
    for n in range(2):
        score(db, seed_survey(db, now=now, customer=f"c-{n}"), 1, config, now)
    at = now + alerts.COMMENT_WAIT

    def broker_down(alert_id: int) -> None:
        raise ConnectionError("Redis is away")

    with pytest.raises(ConnectionError):
        alerts.enqueue_due_alerts(db.factory, at, broker_down)
    assert [r.state for r in alerts_of(db)] == ["queued", "queued"]  # committed before
    assert sweep(db, at + timedelta(seconds=30)) == []
    assert sorted(sweep(db, at + alerts.QUEUED_STALE)) == [r.id for r in alerts_of(db)]


def test_an_erased_customer_s_undelivered_alert_is_cancelled_and_nothing_is_sent(
    db: Database, config, now, receiver: Receiver
):
    config = with_alerts(config, detractor_webhook=receiver.url)
    sid = seed_survey(db, now=now, customer="c-erase")
    score(db, sid, 1, config, now)
    comment(db, sid, "Ana here, call me on +40721000111", now)
    result = ingest_event(db.factory, erased("c-erase", at=now), config, now)
    assert result.status == "accepted"
    [row] = alerts_of(db)
    assert row.state == "pending"
    before = counted("webhook", "cancelled")
    [alert_id] = sweep(db, now + timedelta(seconds=1))
    # Nothing about an erased customer leaves: not the comment, and not the order and score.
    assert run(db, alert_id, config, now + timedelta(seconds=1)) == "cancelled"
    assert receiver.requests == []
    [row] = alerts_of(db)
    assert (row.state, row.last_error) == ("cancelled", alerts.CUSTOMER_ERASED)
    assert counted("webhook", "cancelled") == before + 1
    # A later score of the erased customer (a link still in a mailbox) records no alert either.
    score(db, sid, 0, config, now + timedelta(minutes=1))
    assert [r.state for r in alerts_of(db)] == ["cancelled"]


def sweep_statements(db: Database, config: OperatorConfig, now: datetime, size: int) -> list[str]:
    """The statements of one sweep over ``size`` alerts of each kind it handles: due, lost in
    the queue, and left ``delivering`` by a dead worker (webhooks and emails)."""
    config = with_alerts(
        config, detractor_webhook="https://h.example.com/x", detractor_email="cx@example.com"
    )
    for n in range(2 * size):
        score(db, seed_survey(db, now=now, customer=f"c-{size}-{n}"), 1, config, now)
    at = now + alerts.COMMENT_WAIT
    ids = set(sweep(db, at))  # 4 * size rows queued
    surveys = sorted({r.survey_id for r in alerts_of(db) if r.id in ids})
    with db.session() as s, s.begin():  # half the surveys' alerts claimed, then the worker died
        for row in alerts_of(db):
            if row.survey_id in surveys[:size]:
                assert alerts.claim(s, row.id, at) is not None
    # The other half's messages were lost; and size * 2 rows more are due.
    for n in range(size):
        score(db, seed_survey(db, now=at, customer=f"d-{size}-{n}"), 2, config, at)
    failed_before = [r.state for r in alerts_of(db)].count("failed")
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if not statement.startswith("BEGIN"):
            seen.append(" ".join(statement.split())[:60])

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        later = at + alerts.DELIVERING_STALE
        assert len(sweep(db, later)) == 2 * size + 2 * size + size  # due, lost, webhooks again
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    # The emails whose worker died end failed; the webhooks are among those enqueued again.
    assert [r.state for r in alerts_of(db)].count("failed") == failed_before + size
    return seen


def test_a_sweep_costs_the_same_statements_for_1_or_5_alerts_of_each_kind(db, config, now):
    one = sweep_statements(db, config, now, 1)
    five = sweep_statements(db, config, now, 5)
    assert one == five
    assert len(one) == 4 and all(s.startswith("UPDATE detractor_alerts") for s in one)


def test_two_sweepers_never_take_the_same_alert(pg_db: Database, config, now):
    db = pg_db
    config = with_alerts(config, detractor_webhook="https://hooks.example.com/nps")
    for n in range(2):
        score(db, seed_survey(db, now=now, customer=f"c-{n}"), 1, config, now)
    first, second = (r.id for r in alerts_of(db))
    at = now + alerts.COMMENT_WAIT
    with db.session() as other, other.begin():
        # Another sweeper's transaction has locked the first row and not yet committed.
        other.execute(
            select(DetractorAlert.id).where(DetractorAlert.id == first).with_for_update()
        ).one()
        assert sweep(db, at) == [second]
    assert sweep(db, at) == [first]
    assert sweep(db, at) == []


# --- email --------------------------------------------------------------------------------


def test_email_alert_through_sendgrid(db: Database, config, now, respx_mock):
    config = with_alerts(config, detractor_email="cx-team@example.com")
    sid = seed_survey(db, now=now, channel="email")
    score(db, sid, 6, config, now)
    comment(db, sid, "Too expensive", now)
    [alert_id] = sweep(db, now)
    route = respx_mock.post("https://api.sendgrid.test/v3/mail/send").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "120"}),
            httpx.Response(202, headers={"X-Message-Id": "sg-alert-1"}),
        ]
    )
    channel = SendGridEmailChannel(
        "SG.key",
        "Shop <nps@shop.example>",
        unsubscribe_group_id=42,
        api_base="https://api.sendgrid.test",
    )
    assert run(db, alert_id, config, now, email_channel=channel) == "retry"
    [row] = alerts_of(db)
    assert row.due_at == now + timedelta(seconds=120)  # the provider's Retry-After
    later = now + timedelta(seconds=120)
    assert sweep(db, later) == [alert_id]
    assert run(db, alert_id, config, later, email_channel=channel) == "delivered"
    assert run(db, alert_id, config, later, email_channel=channel) == "skipped"
    assert route.call_count == 2
    mail = json.loads(route.calls.last.request.content)
    assert mail["personalizations"][0]["to"] == [{"email": "cx-team@example.com"}]
    assert mail["subject"].startswith("Detractor: 6/10 on order O-")
    assert "Too expensive" in mail["content"][0]["value"]
    # The customer's survey id is not in the custom args: SendGrid's events about this mail
    # must not be taken for the customer's invitation.
    assert mail.get("custom_args", {}).get("survey_id") in (None, "0")
    # Not in the customers' survey unsubscribe group: staff who left it still get alerts.
    assert "asm" not in mail


def test_email_alert_whose_outcome_is_unknown_is_not_sent_twice(db, config, now, respx_mock):
    config = with_alerts(config, detractor_email="cx-team@example.com")
    score(db, seed_survey(db, now=now), 6, config, now)
    [alert_id] = sweep(db, now + alerts.COMMENT_WAIT)
    route = respx_mock.post("https://api.sendgrid.test/v3/mail/send").respond(500)
    channel = SendGridEmailChannel(
        "SG.key", "nps@shop.example", api_base="https://api.sendgrid.test"
    )
    assert run(db, alert_id, config, now + alerts.COMMENT_WAIT, email_channel=channel) == "failed"
    assert sweep(db, now + timedelta(days=1)) == []
    assert route.call_count == 1


def test_email_alert_to_the_console_without_a_provider(db: Database, config, now):
    import io

    config = with_alerts(config, detractor_email="cx-team@example.com")
    score(db, seed_survey(db, now=now), 0, config, now)
    [alert_id] = sweep(db, now + alerts.COMMENT_WAIT)
    console = ConsoleChannel(ChannelName.email, stream=io.StringIO())
    assert run(db, alert_id, config, now + alerts.COMMENT_WAIT, email_channel=console) == (
        "delivered"
    )
    [message] = console.sent
    assert message.to == "cx-team@example.com" and "0 out of 10" in message.body_text
