"""logs.format: one log format, and no contact, name, answer token or secret in any line.

The flow test runs every path that handles personal data (the queue, HTTP ingest, sends through
Twilio and SendGrid, their webhooks, the answer page, a failing event and a database error)
with every logger at DEBUG, and searches both rendered formats for the customers' data.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import dramatiq
import httpx
import pytest
import time_machine
import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from twilio.request_validator import RequestValidator

from channels.masking import mask_answer_links, mask_log_text
from logs.format import (
    configure_logging,
    log_context,
    make_handler,
    secrets_from_env,
)
from models import DeadLetter, Survey
from tests.conftest import Database
from tests.factories import order_event, purchase
from web.request_ids import RequestIdMiddleware
from worker.log_middleware import LoggingMiddleware

# --- the people and secrets searched for --------------------------------------------------------


@dataclass(frozen=True)
class Person:
    customer_id: str
    first_name: str
    email: str
    phone: str  # E.164
    national: str  # the same number as a Romanian would type it

    def needles(self) -> list[str]:
        digits = self.phone.removeprefix("+")
        local = self.email.split("@")[0]
        spaced = f"{self.national[:4]} {self.national[4:7]} {self.national[7:]}"
        return [
            self.first_name,
            self.email,
            local,
            quote(self.email, safe=""),
            self.phone,
            digits,
            self.national,
            self.national[1:],
            spaced,
            quote(self.phone, safe=""),
        ]


SMS_PERSON = Person("c-zeph", "Zephyrine", "zephyrine.q@example.org", "+40721999888", "0721999888")
EMAIL_PERSON = Person("c-xan", "Xanthippe", "xanthippe.v@example.net", "+40722777666", "0722777666")
COMMENT = "Xanthippe loved the Quokka lamp"

SECRETS = {
    "NPS_SECRET_KEY": "sk-Quokka-7d1e9a4c2b",
    "NPS_INGEST_TOKEN": "ingest-Wombat-51f0c3aa",
    "NPS_DASHBOARD_PASSWORD": "dash-Numbat-88c2e1",
    "TWILIO_AUTH_TOKEN": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "SENDGRID_API_KEY": "SG.Pangolin-key.9b8a7c6d5e4f",
}
TWILIO_ENV = {
    "TWILIO_ACCOUNT_SID": "AC" + "7" * 32,
    "TWILIO_AUTH_TOKEN": SECRETS["TWILIO_AUTH_TOKEN"],
    "TWILIO_FROM": "+15005550006",
    "TWILIO_API_BASE": "https://twilio.test",
}
SENDGRID_ENV = {
    "SENDGRID_API_KEY": SECRETS["SENDGRID_API_KEY"],
    "SENDGRID_FROM": "surveys@shop.example",
    "SENDGRID_UNSUBSCRIBE_GROUP_ID": "42",
    "SENDGRID_API_BASE": "https://sendgrid.test",
}
TWILIO_MESSAGES = (
    f"https://twilio.test/2010-04-01/Accounts/{TWILIO_ENV['TWILIO_ACCOUNT_SID']}/Messages.json"
)
SENDGRID_SEND = "https://sendgrid.test/v3/mail/send"
BASE = "https://nps.example.test"  # NPS_PUBLIC_BASE_URL of runtime_for
# Tuesday 24 November 2026, 12:00 in Bucharest: inside send hours.
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
TOKEN_IN_TEXT = re.compile(r"/s/([A-Za-z0-9._-]{20,})")


# --- capturing every record, rendered both ways -------------------------------------------------


class _Recorder(logging.Handler):
    """Keeps a copy of each record as it was logged, before any filter rewrote it."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(copy.copy(record))


@dataclass
class Captured:
    text_stream: io.StringIO
    recorder: _Recorder
    secrets: tuple[str, ...]
    extra_secrets: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.text_stream.getvalue()

    def render(self, log_format: str) -> str:
        """Every record again, through a fresh handler of that format."""
        out = io.StringIO()
        handler = make_handler(log_format, self.secrets, out)
        for record in self.recorder.records:
            handler.handle(copy.copy(record))
        return out.getvalue()

    def loggers(self) -> set[str]:
        return {r.name for r in self.recorder.records}


@contextmanager
def capture_everything(env: dict[str, str], log_format: str = "text") -> Iterator[Captured]:
    """configure_logging at DEBUG into a buffer, with every existing logger opened up (some
    libraries set their own level, e.g. SQLAlchemy's WARN); everything restored afterwards."""
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    loggers = [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    saved = [
        (lg, lg.level, lg.propagate, lg.disabled, list(lg.handlers), list(lg.filters))
        for lg in loggers
    ]
    hooks = (sys.excepthook, threading.excepthook)
    factory = logging.getLogRecordFactory()
    stream = io.StringIO()
    configure_logging(
        {**env, "NPS_LOG_LEVEL": "DEBUG", "NPS_LOG_FORMAT": log_format}, stream=stream
    )
    recorder = _Recorder()
    root.handlers.insert(0, recorder)
    for lg in loggers:
        lg.setLevel(logging.NOTSET)
        lg.propagate = True
        lg.disabled = False
    try:
        yield Captured(stream, recorder, secrets_from_env(env))
    finally:
        logging.captureWarnings(False)
        sys.excepthook, threading.excepthook = hooks
        logging.setLogRecordFactory(factory)
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
        for lg, level, propagate, disabled, handlers, filters in saved:
            lg.setLevel(level)
            lg.propagate = propagate
            lg.disabled = disabled
            lg.handlers[:] = handlers
            lg.filters[:] = filters


def leaks(rendered: str, needles: list[str]) -> dict[str, list[str]]:
    """Each needle found (case-insensitive), with up to three of the lines holding it."""
    found: dict[str, list[str]] = {}
    lines = rendered.splitlines()
    for needle in needles:
        hits = [line for line in lines if needle.lower() in line.lower()]
        if hits:
            found[needle] = hits[:3]
    return found


# --- the masking shapes -------------------------------------------------------------------------


def test_log_masking_hides_contacts_and_tokens_but_keeps_dates_addresses_and_ids():
    token = "WzUsMTc5NjA4MzIwMF0.KhCami3w3BDzr64vCtA9_hUumKfpdMXbmIR5QxaCFFQ"
    line = (
        f"to +40721999888, 0721 999 888, (0721) 999-888 and {SMS_PERSON.email}; "
        f"GET /s/{token}?score=9 and To=%2B40721999888&From=zephyrine.q%40example.org "
        f"and /hook?survey_id=5&signature=abcdef123 and bare {token}"
    )
    masked = mask_log_text(line)
    assert leaks(masked, [*SMS_PERSON.needles(), token, "abcdef123"]) == {}
    assert "+40******888" in masked and "z**********@example.org" in masked
    assert "/s/[token]?score=9" in masked and "signature=[redacted]" in masked
    kept = (
        "at 2026-11-24 10:00:00,123 retry at 2026-11-24T10:04:00+00:00 from 192.168.100.200:5000 "
        "message 12345678-1234-abcd-ef01-123456789012 sid SM00000000000000000000000000000001 "
        "order A-123456789 counts 120 340 560 survey 42 took 0.0123 s"
    )
    assert mask_log_text(kept) == kept
    assert mask_log_text(masked) == masked  # masking twice changes nothing


def test_secrets_are_taken_from_the_environment_and_masked_by_value():
    env = {
        **SECRETS,
        "NPS_DATABASE_URL": "postgresql://nps:db-Pass-word-9@db.internal/nps",
        "NPS_BROKER_URL": "redis://:redis-Pass-4242@redis.internal:6379/0",
        "SENDGRID_WEBHOOK_PUBLIC_KEY": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEpublic",
        "NPS_PUBLIC_BASE_URL": "https://nps.example.test",
        "HOME": "/root",
    }
    secrets = secrets_from_env(env)
    assert set(SECRETS.values()) | {"db-Pass-word-9", "redis-Pass-4242"} <= set(secrets)
    assert env["SENDGRID_WEBHOOK_PUBLIC_KEY"] not in secrets
    assert "https://nps.example.test" not in secrets
    out = io.StringIO()
    handler = make_handler("text", secrets, out)
    logger = logging.getLogger("tests.logs.secrets")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "key %s token %s url %s auth %s",
            SECRETS["NPS_SECRET_KEY"],
            quote(SECRETS["SENDGRID_API_KEY"], safe=""),
            "postgresql://nps:some-other-pw@db/x",
            "Authorization: Bearer abcdefghijklmnop",
        )
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    rendered = out.getvalue()
    assert leaks(rendered, [*SECRETS.values(), "some-other-pw", "abcdefghijklmnop"]) == {}
    assert "key [secret]" in rendered and "nps:[secret]@db" in rendered
    assert "Bearer [secret]" in rendered


# --- formats and context ------------------------------------------------------------------------


def test_text_and_json_formats_carry_the_context_fields():
    with capture_everything({}, log_format="json") as captured:
        logger = logging.getLogger("tests.logs.format")
        with log_context(survey_id=12, event_id="evt-9"):
            logger.info("sent to %s", SMS_PERSON.phone)
        try:
            raise RuntimeError(f"could not reach {SMS_PERSON.email}")
        except RuntimeError:
            logger.exception("failed", extra={"survey_id": 13})
        with warnings.catch_warnings():
            # "always": a warning from this line already shown earlier in the session (the
            # default action shows each location once) must still reach the log here.
            warnings.simplefilter("always")
            # pytest swaps warnings.showwarning around each test, and logging re-installs its
            # hook only when it is not on already (an earlier test may have turned it on).
            logging.captureWarnings(False)
            logging.captureWarnings(True)
            warnings.warn(f"odd contact {SMS_PERSON.email}", UserWarning, stacklevel=1)
    lines = [json.loads(line) for line in captured.text.splitlines()]
    mine = [line for line in lines if line["logger"] == "tests.logs.format"]
    assert mine[0]["message"] == "sent to +40******888"
    assert (mine[0]["survey_id"], mine[0]["event_id"]) == ("12", "evt-9")
    assert set(mine[0]) == {"time", "level", "logger", "message", "survey_id", "event_id"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", mine[0]["time"])
    assert mine[1]["survey_id"] == "13" and "event_id" not in mine[1]
    assert "RuntimeError: could not reach z**********@example.org" in mine[1]["exception"]
    assert any(line["logger"] == "py.warnings" for line in lines)  # warnings are logged too
    assert leaks(captured.text, SMS_PERSON.needles()) == {}
    text = captured.render("text")
    assert " INFO tests.logs.format survey_id=12 event_id=evt-9: sent to +40******888" in text
    assert leaks(text, SMS_PERSON.needles()) == {}


def test_bad_level_or_format_falls_back_and_says_so():
    stream = io.StringIO()
    with capture_everything({}):
        configure_logging({"NPS_LOG_LEVEL": "LOUD", "NPS_LOG_FORMAT": "xml"}, stream=stream)
        assert logging.getLogger().level == logging.INFO
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith(
        " WARNING logs.format: NPS_LOG_LEVEL='LOUD' is not a log level; using INFO"
    )
    assert lines[1].endswith(" WARNING logs.format: NPS_LOG_FORMAT='xml' is not one of text, json")


def _echo_app() -> FastAPI:
    app = FastAPI()
    log = logging.getLogger("tests.logs.web")

    @app.get("/ping")
    def ping() -> dict[str, str]:
        log.info("ping")
        return {"ok": "yes"}

    app.add_middleware(RequestIdMiddleware)
    return app


@pytest.mark.parametrize(
    ("offered", "kept"),
    [
        ("lb-2f9c1e77.aa_01", True),
        (None, False),
        (SMS_PERSON.email, False),
        (SMS_PERSON.phone.removeprefix("+"), False),  # digits only, yet a phone number
        ("x" * 65, False),
        ("two words", False),
        ("WzUsMTc5NjA4MzIwMF0.KhCami3w3BDzr64vCtA9_hUumKfpdMXbmIR5QxaCFFQ", False),
    ],
)
def test_request_id_is_honoured_only_when_safe_and_returned(offered, kept):
    with capture_everything({}, log_format="json") as captured:
        client = TestClient(_echo_app())
        headers = {"X-Request-ID": offered} if offered is not None else {}
        response = client.get("/ping", headers=headers)
    request_id = response.headers["X-Request-ID"]
    assert (request_id == offered) is kept
    if not kept:
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    [line] = [json.loads(line) for line in captured.text.splitlines() if '"tests.logs.web"' in line]
    assert line["request_id"] == request_id


# --- dramatiq -----------------------------------------------------------------------------------


def _leaky_event(person: Person) -> dict[str, Any]:
    event = purchase("L-1", person.customer_id, email=person.email, phone=person.phone)
    event["customer"]["first_name"] = person.first_name
    return event


def test_dramatiq_failures_are_logged_by_actor_and_message_id_only():
    """dramatiq's worker renders a failed message with its arguments: the whole event."""
    stub = StubBroker()
    stub.emit_after("process_boot")
    stub.add_middleware(LoggingMiddleware(), before=AgeLimit)

    def leaky(event: dict[str, Any]) -> None:
        raise ValueError(f"could not reach {event['customer']['email']}")

    actor = dramatiq.actor(
        leaky, broker=stub, queue_name="leaky", max_retries=1, min_backoff=1, max_backoff=5
    )
    with capture_everything({}) as captured:
        worker = Worker(stub, worker_timeout=50, worker_threads=1)
        worker.start()
        try:
            message = actor.send(_leaky_event(SMS_PERSON))
            stub.join("leaky", fail_fast=False)
            worker.join()
        finally:
            worker.stop()
    text = captured.text
    assert f"Failed to process message leaky[{message.message_id}] with unhandled" in text
    assert f"Retries exceeded for message '{message.message_id}'" in text
    assert f"message_id={message.message_id}" in text
    assert "ValueError: could not reach z**********@example.org" in text
    assert leaks(text, SMS_PERSON.needles()) == {}
    assert leaks(captured.render("json"), SMS_PERSON.needles()) == {}


LEAKY_WORKER = """
import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit

from worker.log_middleware import LoggingMiddleware

broker = RedisBroker(url=os.environ["NPS_BROKER_URL"])
broker.add_middleware(LoggingMiddleware(), before=AgeLimit)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="leaky", max_retries=0)
def leaky(event):
    raise ValueError("could not reach " + event["customer"]["email"])
"""


@pytest.mark.redis
def test_worker_processes_started_by_dramatiq_log_in_our_format(redis_url, tmp_path: Path):
    """dramatiq's CLI starts the worker processes and sets up their logging itself; the
    process_boot hook replaces that with ours, in each process."""
    from dramatiq import Message
    from dramatiq.brokers.redis import RedisBroker

    (tmp_path / "leaky_worker.py").write_text(LEAKY_WORKER, encoding="utf-8")
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        **SECRETS,
        "NPS_BROKER_URL": redis_url,
        "NPS_LOG_FORMAT": "json",
        "NPS_LOG_LEVEL": "DEBUG",
        "PYTHONPATH": os.pathsep.join([str(root), str(tmp_path)]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "leaky_worker", "--processes", "1", "--threads", "1"],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        shop = RedisBroker(url=redis_url)
        message: Message[Any] = Message(
            queue_name="leaky",
            actor_name="leaky",
            args=(_leaky_event(SMS_PERSON),),
            kwargs={},
            options={},
        )
        shop.enqueue(message)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("Failed to process" in x for x in lines):
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=30)
        reader.join(timeout=10)
    output = "".join(lines)
    [failure] = [json.loads(x) for x in lines if "Failed to process" in x]
    assert failure["message"] == (
        f"Failed to process message leaky[{message.message_id}] with unhandled exception."
    )
    assert failure["message_id"] == message.message_id
    assert "ValueError: could not reach z**********@example.org" in failure["exception"]
    assert leaks(output, SMS_PERSON.needles()) == {}


# --- uvicorn's access log -----------------------------------------------------------------------


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """The app on a loopback port, in a real uvicorn, logging as `nps-dispatch web` does."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_uvicorn_access_log_hides_tokens_and_truncates_the_client():
    token = "WzUsMTc5NjA4MzIwMF0.KhCami3w3BDzr64vCtA9_hUumKfpdMXbmIR5QxaCFFQ"
    with capture_everything({}) as captured, serving(_echo_app()) as base:
        httpx.get(f"{base}/s/{token}?score=9&sig=abcdef123")
        httpx.get(f"{base}/ping?token=abcdef456", headers={"X-Request-ID": "lb-77"})
    access = [r for r in captured.text.splitlines() if " uvicorn.access " in r]
    assert len(access) == 2
    assert access[0].endswith('127.0.0.0 - "GET /s/[token]?score=9&sig=[redacted] HTTP/1.1" 404')
    assert "uvicorn.access request_id=lb-77: " in access[1]
    assert access[1].endswith('"GET /ping?token=[redacted] HTTP/1.1" 200')
    assert leaks(captured.text, [token, "abcdef123", "abcdef456"]) == {}


def test_access_filter_keeps_uvicorns_own_formatter_working():
    """Operators running uvicorn with its default log config still get the filtered path."""
    from uvicorn.logging import AccessFormatter

    with capture_everything({}):
        record = logging.LogRecord(
            "uvicorn.access",
            logging.INFO,
            __file__,
            1,
            '%s - "%s %s HTTP/%s" %d',
            ("203.0.113.7:51234", "POST", "/s/abcdefghijklmnop.qrstuvwxyz?score=3", "1.1", 303),
            None,
        )
        logging.getLogger("uvicorn.access").filter(record)
    rendered = AccessFormatter('%(client_addr)s "%(request_line)s" %(status_code)s').format(record)
    assert rendered == '203.0.113.0 "POST /s/[token]?score=3 HTTP/1.1" 303 See Other'
    assert mask_answer_links(rendered) == rendered


# --- the whole flow -----------------------------------------------------------------------------


def _public_key_of(private_key: ec.EllipticCurvePrivateKey) -> str:
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def _sendgrid_headers(private_key: ec.EllipticCurvePrivateKey, body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode("ascii"),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


def _twilio_post(client: httpx.Client, public_url: str, params: dict[str, str]) -> httpx.Response:
    signature = RequestValidator(SECRETS["TWILIO_AUTH_TOKEN"]).compute_signature(public_url, params)
    parts = urlsplit(public_url)
    return client.post(
        parts.path + (f"?{parts.query}" if parts.query else ""),
        content=urlencode(params).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": str(signature),
        },
    )


def _event_of(person: Person, order_id: str, **consent: bool) -> dict[str, Any]:
    event = purchase(
        order_id,
        person.customer_id,
        at=T0 - timedelta(days=12),
        email=person.email,
        phone=person.national if person is SMS_PERSON else person.phone,
        consent={**consent, "source": "checkout-checkbox", "text_version": "2026-03"},
    )
    event["customer"]["first_name"] = person.first_name
    return event


@contextmanager
def _refusing_customer(db: Database, customer_id: str) -> Iterator[None]:
    """Make the database refuse one customer's row: a real constraint error, with the row's
    values in its bound parameters (and, on PostgreSQL, in the server's DETAIL line)."""
    with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            conn.execute(
                text(
                    "ALTER TABLE customers ADD CONSTRAINT test_refused_customer "
                    f"CHECK (external_id <> '{customer_id}')"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER test_refused_customer BEFORE INSERT ON customers "
                    f"WHEN NEW.external_id = '{customer_id}' "
                    "BEGIN SELECT RAISE(ABORT, 'customer refused'); END"
                )
            )
    try:
        yield
    finally:
        with db.engine.begin() as conn:
            if db.dialect == "postgresql":
                conn.execute(
                    text("ALTER TABLE customers DROP CONSTRAINT IF EXISTS test_refused_customer")
                )
            else:
                conn.execute(text("DROP TRIGGER IF EXISTS test_refused_customer"))


@pytest.fixture
def stub_worker():
    from worker.broker import broker

    broker.flush_all()
    installed = None
    if not any(isinstance(m, LoggingMiddleware) for m in broker.middleware):
        installed = LoggingMiddleware()
        broker.add_middleware(installed, before=AgeLimit)
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    yield broker
    worker.stop()
    if installed is not None:
        broker.middleware.remove(installed)


def test_no_personal_data_or_secret_in_any_log_line_of_a_full_flow(
    db: Database, runtime_for, stub_worker, respx_mock
):
    from web.app import create_app
    from worker.actors import ingest_event
    from worker.broker import EVENTS_QUEUE, SENDS_QUEUE
    from worker.scheduling import build_scheduler as scheduler

    broker = stub_worker
    private_key = ec.generate_private_key(ec.SECP256R1())
    env = {
        **SECRETS,
        **TWILIO_ENV,
        **SENDGRID_ENV,
        "SENDGRID_WEBHOOK_PUBLIC_KEY": _public_key_of(private_key),
    }
    respx_mock.route(host="127.0.0.1").pass_through()
    twilio = respx_mock.post(TWILIO_MESSAGES).respond(
        201,
        json={"sid": "SM" + "5" * 32, "status": "queued", "num_segments": "1"},
    )
    sendgrid = respx_mock.post(SENDGRID_SEND).respond(202, headers={"X-Message-Id": "sg-msg-1"})

    with (
        time_machine.travel(T0, tick=True),
        capture_everything(env) as captured,
    ):
        runtime = runtime_for(db, **env)
        app = create_app(runtime)
        # Until create_app installs it itself.
        if not any(m.cls is RequestIdMiddleware for m in app.user_middleware):  # type: ignore[comparison-overlap]
            app.add_middleware(RequestIdMiddleware)

        # 1. The queue: Zephyrine's purchase (SMS consent only) and its delivery.
        ingest_event.send(_event_of(SMS_PERSON, "Z-1", sms=True, email=False))
        ingest_event.send(order_event("delivered", "Z-1", at=T0 - timedelta(days=11)))
        broker.join(EVENTS_QUEUE)

        with serving(app) as base, httpx.Client(base_url=base) as client:
            # 2. HTTP: Xanthippe's purchase (email only), its delivery, and a bad event that
            # quotes Zephyrine's contacts.
            bad = _event_of(SMS_PERSON, "Z-2", sms=True)
            del bad["customer"]["id"]
            bad["customer"]["email"] = "not an address " + SMS_PERSON.email
            response = client.post(
                "/v1/events",
                json=[
                    _event_of(EMAIL_PERSON, "X-1", email=True, sms=False),
                    order_event("delivered", "X-1", at=T0 - timedelta(days=11)),
                    bad,
                ],
                headers={"Authorization": f"Bearer {SECRETS['NPS_INGEST_TOKEN']}"},
            )
            assert response.status_code == 200
            assert [r["status"] for r in response.json()["results"]] == [
                "accepted",
                "accepted",
                "rejected",
            ]

            # 3. The scheduler queues both surveys; the worker sends one SMS and one email.
            scheduler(runtime).tick(runtime.config)
            broker.join(SENDS_QUEUE)
            sms = parse_qs(twilio.calls.last.request.content.decode())
            assert sms["To"] == [SMS_PERSON.phone]
            mail = json.loads(sendgrid.calls.last.request.content)
            assert mail["personalizations"][0]["to"] == [{"email": EMAIL_PERSON.email}]
            with db.session() as s:
                surveys = dict(s.execute(select(Survey.channel, Survey.id)).all())

            # 4. Twilio: a status callback and Zephyrine's reply.
            delivered = {
                "MessageSid": "SM" + "5" * 32,
                "MessageStatus": "delivered",
                "To": SMS_PERSON.phone,
                "From": TWILIO_ENV["TWILIO_FROM"],
                "AccountSid": TWILIO_ENV["TWILIO_ACCOUNT_SID"],
            }
            assert _twilio_post(client, sms["StatusCallback"][0], delivered).status_code == 204
            reply = {
                "MessageSid": "SM" + "6" * 32,
                "From": SMS_PERSON.phone,
                "To": TWILIO_ENV["TWILIO_FROM"],
                "Body": f"9 thanks, {SMS_PERSON.first_name}",
                "AccountSid": TWILIO_ENV["TWILIO_ACCOUNT_SID"],
            }
            inbound = _twilio_post(client, f"{BASE}/webhooks/twilio/inbound", reply)
            assert inbound.status_code == 200

            # 5. SendGrid: delivered and opened.
            events = [
                {
                    "email": EMAIL_PERSON.email,
                    "event": name,
                    "sg_event_id": f"sg-{name}",
                    "sg_message_id": "sg-msg-1.filter-1",
                    "timestamp": int(time.time()),
                    "survey_id": str(surveys["email"]),
                }
                for name in ("delivered", "open")
            ]
            body = json.dumps(events).encode()
            hooked = client.post(
                "/webhooks/sendgrid/events",
                content=body,
                headers=_sendgrid_headers(private_key, body),
            )
            assert hooked.status_code in (200, 204)

            # 6. The answer page: the link of score 9 in the email, GET then POST, a comment.
            html = next(c["value"] for c in mail["content"] if c["type"] == "text/html")
            link = next(
                u.replace("&amp;", "&") for u in re.findall(r'href="([^"]+)"', html) if "=9" in u
            )
            path = urlsplit(link).path
            assert client.get(f"{path}?score=9").status_code == 200
            assert client.post(path, data={"score": "9"}).status_code in (302, 303)
            assert client.post(path, data={"comment": COMMENT}).status_code in (302, 303)

        # 7. A failing event, retried then dead-lettered: the database refuses the row.
        failing = _event_of(SMS_PERSON, "Z-3", sms=True)
        failing["customer"]["id"] = "c-refused"
        with _refusing_customer(db, "c-refused"):
            refused = ingest_event.send_with_options(
                args=(failing,), max_retries=1, min_backoff=10, max_backoff=50
            )
            broker.join(EVENTS_QUEUE, fail_fast=False)

    # What happened (so that the logs below are those of a real flow).
    with db.session() as s:
        states = dict(s.execute(select(Survey.channel, Survey.state)).all())
        letters = list(s.scalars(select(DeadLetter)))
        answered = s.scalar(select(func.count()).select_from(Survey).where(Survey.score == 9))
    assert answered == 2, states
    assert [letter.event_id for letter in letters] == [failing["event_id"]]
    retried = [
        r
        for r in captured.recorder.records
        if r.msg == "Retrying message %r in %d milliseconds." and r.args[0] == refused.message_id
    ]
    assert len(retried) == 1

    tokens = sorted(set(TOKEN_IN_TEXT.findall(html)) | set(TOKEN_IN_TEXT.findall(sms["Body"][0])))
    assert tokens
    needles = [
        *SMS_PERSON.needles(),
        *EMAIL_PERSON.needles(),
        COMMENT,
        "Quokka lamp",
        *tokens,
        *(t.split(".")[-1] for t in tokens),  # the signature alone
        *SECRETS.values(),
    ]
    # The dead letter keeps the event for replay; its error line must not quote it.
    assert leaks(letters[0].error, needles) == {}
    text_output = captured.text
    json_output = captured.render("json")
    assert leaks(text_output, needles) == {}
    assert leaks(json_output, needles) == {}
    assert leaks(captured.render("text"), needles) == {}

    # Every source was heard, at DEBUG.
    heard = captured.loggers()
    for prefix in ("dramatiq.", "sqlalchemy.engine", "uvicorn.access", "httpx", "worker."):
        assert any(name.startswith(prefix) for name in heard), prefix
    assert any(r.levelno == logging.DEBUG for r in captured.recorder.records)
    assert any(
        r.name.startswith("sqlalchemy.engine") and str(r.msg).endswith("Row %r")
        for r in captured.recorder.records
    )
    lines = [json.loads(line) for line in json_output.splitlines() if line.startswith("{")]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert access and all("request_id" in line for line in access)
    assert any("/s/[token]" in line["message"] for line in access)
    assert any(
        line.get("survey_id") == str(surveys["sms"]) and "message_id" in line for line in lines
    )


@pytest.mark.parametrize(
    ("client", "masked"),
    [
        ("203.0.113.7:51234", "203.0.113.0"),
        ("10.0.0.255:80", "10.0.0.0"),
        ("[2001:db8:1:2::7]:443", "2001:db8:1::"),
        ("2001:db8:1:2::7", "2001:db8:1::"),
        ("203.0.113.07:51234", "203.0.113.07"),  # not an address ipaddress reads: no network
        ("256.1.1.1:80", "256.1.1.1"),
        ("unix-socket", "unix-socket"),
    ],
)
def test_access_log_clients_are_cut_to_their_network(client: str, masked: str) -> None:
    from logs.redaction import _masked_client

    assert _masked_client(client) == masked
