"""A fake Twilio and SendGrid on loopback that misbehaves on purpose, and remembers everything.

It speaks the parts of their HTTP APIs the product uses, as the official clients call them:

- Twilio ``POST /2010-04-01/Accounts/{sid}/Messages.json`` (form: ``To``, ``From`` or
  ``MessagingServiceSid``, ``Body``, ``StatusCallback``; HTTP basic auth with the account SID and
  auth token) and ``GET`` of the same path (the message list, filtered by ``To`` and
  ``DateSent>``), answering Twilio's JSON (legacy error bodies ``{code, message, more_info,
  status}``);
- SendGrid ``POST /v3/mail/send`` (JSON, ``Authorization: Bearer``), answering 202 with
  ``X-Message-Id``.

A :class:`~bench.fakes.faults.FaultPlan` decides which requests misbehave: 429, 5xx, a reply
slower than the client's timeout, or a 2xx without the message id; some of those *after* the
message was created. Recipients can also be refused for good (a landline: Twilio 21614; a
number that replied STOP: 21610). Every message created is logged with its recipient, body, our
survey id (from the StatusCallback query or SendGrid ``custom_args``) and the time the request
arrived; ``on_created`` is told at once (the delivery news and customers follow from there).
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bench.fakes.faults import CREATE_FAULTS, LOOKUP_FAULTS, FaultPlan, unit

__all__ = ["Attempt", "FakeProvider", "Message"]

log = logging.getLogger(__name__)

TWILIO = "twilio"
SENDGRID = "sendgrid"
_TWILIO_PREFIX = "/2010-04-01/Accounts/"
_TWILIO_SUFFIX = "/Messages.json"


@dataclass
class Message:
    """One message the fake provider created (and would have delivered)."""

    id: str
    provider: str
    to: str
    body: str
    survey_id: int | None
    status_callback: str | None
    received_at: float  # epoch seconds: when the create request arrived
    fault: str | None  # how the create request was answered, when not normally
    date_sent: float | None = None  # Twilio: set once the message is "sent" to the carrier
    status: str = "queued"


@dataclass(frozen=True)
class Attempt:
    """One create request, whatever became of it."""

    provider: str
    to: str
    survey_id: int | None
    received_at: float
    outcome: str  # "created", "created, <fault>", "<fault>", "refused <code>"
    message_id: str | None = None


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _survey_from_url(url: str | None) -> int | None:
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get("survey_id", [])
    return int(values[0]) if len(values) == 1 and values[0].isdigit() else None


def _rfc2822(moment: float | None) -> str | None:
    return None if moment is None else email.utils.formatdate(moment, usegmt=True)


class FakeProvider:
    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        sendgrid_key: str,
        faults: FaultPlan,
        client_timeout: float,
        landlines: frozenset[str] = frozenset(),
        on_created: Callable[[Message], None] | None = None,
        on_request: Callable[[str], float] | None = None,
    ) -> None:
        self.account_sid = account_sid
        self._basic = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._bearer = f"Bearer {sendgrid_key}"
        self.faults = faults
        self.client_timeout = client_timeout
        self.landlines = landlines
        self.on_created = on_created
        self.on_request = on_request
        self._lock = threading.Lock()
        self.messages: list[Message] = []
        self.attempts: list[Attempt] = []
        self.injected: Counter[str] = Counter()  # "<provider> <fault>"
        self.requests: Counter[str] = Counter()  # "<provider> <operation>"
        self.refusals: Counter[str] = Counter()  # "<provider> <code>"
        self._opted_out: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> int:
        handler = _handler_for(self)
        server = _Server(("127.0.0.1", 0), handler)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        return int(server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- facts the run tells the fake ------------------------------------------------------------
    def opt_out(self, phone: str) -> None:
        """The recipient replied STOP: Twilio refuses further messages to it with 21610."""
        with self._lock:
            self._opted_out.add(phone)

    def snapshot(self) -> tuple[list[Message], list[Attempt]]:
        with self._lock:
            return list(self.messages), list(self.attempts)

    def mark_sent(self, message: Message, when: float) -> None:
        with self._lock:
            message.date_sent = message.date_sent or when
            message.status = "sent"

    # -- request handling ------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: str, headers: Any, body: bytes) -> _Reply:
        received = time.time()
        if path.startswith(_TWILIO_PREFIX) and path.endswith(_TWILIO_SUFFIX):
            sid = path[len(_TWILIO_PREFIX) : -len(_TWILIO_SUFFIX)]
            if headers.get("Authorization") != self._basic or sid != self.account_sid:
                return self._twilio_error(401, 20003, "Authenticate")
            if method == "POST":
                return self._twilio_create(body, received)
            if method == "GET":
                return self._twilio_list(query)
        if path == "/v3/mail/send" and method == "POST":
            if headers.get("Authorization") != self._bearer:
                return _Reply(401, b'{"errors":[{"message":"authorization required"}]}')
            return self._sendgrid_send(body, received)
        return _Reply(404, b'{"message":"not found"}')

    def _count(self, counter: Counter[str], key: str) -> None:
        with self._lock:
            counter[key] += 1

    def _record(
        self,
        provider: str,
        to: str,
        body: str,
        survey_id: int | None,
        callback: str | None,
        received: float,
        fault: str | None,
    ) -> Message:
        prefix = "SM" + secrets.token_hex(16) if provider == TWILIO else None
        message_id = prefix or base64.urlsafe_b64encode(secrets.token_bytes(16)).decode()[:22]
        message = Message(message_id, provider, to, body, survey_id, callback, received, fault)
        outcome = "created" if fault is None else f"created, {fault}"
        with self._lock:
            self.messages.append(message)
            self.attempts.append(Attempt(provider, to, survey_id, received, outcome, message_id))
        if self.on_created is not None:
            try:
                self.on_created(message)
            except Exception:  # the run's bookkeeping must not break the provider
                log.exception("on_created failed")
        return message

    def _attempt(self, provider: str, to: str, survey_id: int | None, at: float, what: str) -> None:
        with self._lock:
            self.attempts.append(Attempt(provider, to, survey_id, at, what))

    def _arrived(self, to: str) -> None:
        """Tell the run a request for ``to`` arrived; it may ask us to take our time."""
        if self.on_request is None:
            return
        try:
            hold = self.on_request(to)
        except Exception:
            log.exception("on_request failed")
            return
        if hold > 0:
            time.sleep(hold)

    def _stall(self) -> None:
        """Answer later than the client waits: it sees a read timeout."""
        time.sleep(self.client_timeout + 1.0)

    # -- Twilio ----------------------------------------------------------------------------------
    def _twilio_error(
        self, status: int, code: int, message: str, headers: dict[str, str] | None = None
    ) -> _Reply:
        payload = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        return _Reply(status, json.dumps(payload).encode(), headers or {})

    def _twilio_json(self, message: Message, *, with_sid: bool = True) -> dict[str, Any]:
        created = _rfc2822(message.received_at)
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": message.body,
            "date_created": created,
            "date_sent": _rfc2822(message.date_sent),
            "date_updated": created,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": "+15005550006",
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": message.id if with_sid else None,
            "status": message.status,
            "subresource_uris": {},
            "to": message.to,
            "uri": f"{_TWILIO_PREFIX}{self.account_sid}/Messages/{message.id}.json",
        }

    def _server_error(self, provider: str, to: str) -> tuple[int, int]:
        status = (500, 502, 503)[int(unit("5xx", provider, to, time.time()) * 3)]
        return status, 20500 if status == 500 else 20503

    def _twilio_create(self, raw: bytes, received: float) -> _Reply:
        self._count(self.requests, "twilio create")
        form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}
        to, text = form.get("To", ""), form.get("Body", "")
        callback = form.get("StatusCallback")
        survey_id = _survey_from_url(callback)
        self._arrived(to)
        fault = self.faults.decide("twilio create", to, CREATE_FAULTS)
        if fault is not None:
            self._count(self.injected, f"twilio {fault}")
        if fault == "429":
            self._attempt(TWILIO, to, survey_id, received, fault)
            return self._twilio_error(429, 20429, "Too Many Requests", {"Retry-After": "1"})
        if fault == "5xx_before_create":
            self._attempt(TWILIO, to, survey_id, received, fault)
            status, code = self._server_error(TWILIO, to)
            return self._twilio_error(status, code, "Service unavailable")
        if fault == "timeout_before_create":
            self._attempt(TWILIO, to, survey_id, received, fault)
            self._stall()
            return self._twilio_error(503, 20503, "Service unavailable")
        with self._lock:
            stopped = to in self._opted_out
        if to in self.landlines or stopped:
            code = 21610 if stopped else 21614
            self._count(self.refusals, f"twilio {code}")
            self._attempt(TWILIO, to, survey_id, received, f"refused {code}")
            why = "Attempt to send to unsubscribed recipient" if stopped else "not SMS-capable"
            return self._twilio_error(400, code, f"'To' number {why}")
        message = self._record(TWILIO, to, text, survey_id, callback, received, fault)
        if fault == "5xx_after_create":
            status, code = self._server_error(TWILIO, to)
            return self._twilio_error(status, code, "Service unavailable")
        if fault == "timeout_after_create":
            self._stall()
        payload = self._twilio_json(message, with_sid=fault != "2xx_without_id")
        return _Reply(201, json.dumps(payload).encode())

    def _twilio_list(self, query: str) -> _Reply:
        self._count(self.requests, "twilio list")
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        to = params.get("To", "")
        fault = self.faults.decide("twilio list", to, LOOKUP_FAULTS)
        if fault is not None:
            self._count(self.injected, f"twilio list {fault}")
            if fault == "429":
                return self._twilio_error(429, 20429, "Too Many Requests", {"Retry-After": "1"})
            status, code = self._server_error(TWILIO, to)
            return self._twilio_error(status, code, "Service unavailable")
        after = params.get("DateSent>")
        since = (
            datetime.strptime(after, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
            if after
            else 0.0
        )
        now = time.time()
        with self._lock:
            found = [
                m
                for m in self.messages
                if m.provider == TWILIO
                and m.to == to
                and m.date_sent is not None
                and since <= m.date_sent <= now
            ]
            items = [self._twilio_json(m) for m in sorted(found, key=lambda m: -m.received_at)]
        page_size = int(params.get("PageSize", "50") or 50)
        uri = f"{_TWILIO_PREFIX}{self.account_sid}{_TWILIO_SUFFIX}"
        payload = {
            "messages": items[:page_size],
            "end": max(len(items[:page_size]) - 1, 0),
            "first_page_uri": uri,
            "next_page_uri": None,
            "page": 0,
            "page_size": page_size,
            "previous_page_uri": None,
            "start": 0,
            "uri": uri,
        }
        return _Reply(200, json.dumps(payload).encode())

    # -- SendGrid --------------------------------------------------------------------------------
    def _sendgrid_send(self, raw: bytes, received: float) -> _Reply:
        self._count(self.requests, "sendgrid send")
        try:
            mail = json.loads(raw)
            personalization = mail["personalizations"][0]
            to = str(personalization["to"][0]["email"])
        except (ValueError, KeyError, IndexError, TypeError):
            return _Reply(400, b'{"errors":[{"message":"bad request"}]}')
        custom = {**(mail.get("custom_args") or {}), **(personalization.get("custom_args") or {})}
        survey = str(custom.get("survey_id", ""))
        survey_id = int(survey) if survey.isdigit() else None
        text = "\n".join(str(part.get("value", "")) for part in mail.get("content") or [])
        self._arrived(to)
        fault = self.faults.decide("sendgrid send", to, CREATE_FAULTS)
        if fault is not None:
            self._count(self.injected, f"sendgrid {fault}")
        if fault == "429":
            self._attempt(SENDGRID, to, survey_id, received, fault)
            reset = {"X-RateLimit-Reset": str(int(time.time()) + 1)}
            return _Reply(429, b'{"errors":[{"message":"too many requests"}]}', reset)
        if fault == "5xx_before_create":
            self._attempt(SENDGRID, to, survey_id, received, fault)
            status, _ = self._server_error(SENDGRID, to)
            return _Reply(status, b'{"errors":[{"message":"internal error"}]}')
        if fault == "timeout_before_create":
            self._attempt(SENDGRID, to, survey_id, received, fault)
            self._stall()
            return _Reply(503, b"")
        message = self._record(SENDGRID, to, text, survey_id, None, received, fault)
        if fault == "5xx_after_create":
            status, _ = self._server_error(SENDGRID, to)
            return _Reply(status, b'{"errors":[{"message":"internal error"}]}')
        if fault == "timeout_after_create":
            self._stall()
        headers = {} if fault == "2xx_without_id" else {"X-Message-Id": message.id}
        return _Reply(202, b"", headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A killed worker drops its keep-alive connections: expected here, not worth a trace.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            log.exception("fake provider: error on a connection")


def _handler_for(provider: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            try:
                reply = provider.handle(method, parts.path, parts.query, self.headers, body)
            except Exception:
                log.exception("fake provider failed on %s %s", method, parts.path)
                reply = _Reply(500, b'{"message":"fake provider error"}')
            try:
                self.send_response(reply.status)
                content_type = "application/json" if reply.body else "text/plain"
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if reply.body:
                    self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up waiting (a timeout fault)

        def do_POST(self) -> None:
            self._serve("POST")

        def do_GET(self) -> None:
            self._serve("GET")

    return Handler
