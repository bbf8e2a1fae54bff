"""The fake providers' delivery news: status callbacks and Event Webhook batches, signed as the
real ones are, each delivered 1-3 times, late and out of order (a "delivered" may overtake its
"sent"; a callback may overtake the product's own record of the send).

Twilio: ``POST`` to the message's ``StatusCallback`` URL, form fields as Twilio sends them,
``X-Twilio-Signature`` over that URL. SendGrid: batches of events to the Event Webhook URL, with
``survey_id`` (our custom arg) at the top level of each event, signed with the ECDSA key whose
public half the product holds. A delivery answered with 5xx or not answered is retried a bounded
number of times (SendGrid retries for a day; here seconds); a 4xx is not retried and is counted.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench.chaos_timeline import Timeline
from bench.fakes.faults import unit
from bench.fakes.provider import TWILIO, FakeProvider, Message
from bench.fakes.signing import SendGridSigner, TwilioSigner

__all__ = ["Callbacks", "MailboxFacts", "copies"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
SHOP_NUMBER = "+15005550006"


def copies(seed: int, *key: object) -> int:
    """How many times one webhook is delivered: 1 (50%), 2 (35%) or 3 (15%)."""
    u = unit(seed, "copies", *key)
    return 1 if u < 0.5 else 2 if u < 0.85 else 3


@dataclass(frozen=True)
class MailboxFacts:
    """What the carriers and mailboxes will do with a message, fixed by the run's plan."""

    unreachable_phones: frozenset[str]
    bouncing_emails: frozenset[str]


class Callbacks:
    def __init__(
        self,
        *,
        timeline: Timeline,
        provider: FakeProvider,
        twilio: TwilioSigner,
        sendgrid: SendGridSigner,
        account_sid: str,
        sendgrid_url: str,
        seed: int,
        facts: MailboxFacts,
        on_delivered: Callable[[Message, float], None] | None = None,
    ) -> None:
        self.timeline = timeline
        self.provider = provider
        self.twilio = twilio
        self.sendgrid = sendgrid
        self.account_sid = account_sid
        self.sendgrid_url = sendgrid_url
        self.seed = seed
        self.facts = facts
        self.on_delivered = on_delivered
        self.http = httpx.Client(timeout=15.0)
        self._lock = threading.Lock()
        self._outbox: list[tuple[float, dict[str, Any]]] = []
        self._suppressed: set[str] = set()
        self.deliveries: Counter[str] = Counter()  # "<kind> <HTTP status | error>"
        self.planned: Counter[str] = Counter()  # "<provider> <status>"
        self._flushing = False

    def close(self) -> None:
        self._flushing = False
        self.http.close()

    # -- planning --------------------------------------------------------------------------------
    def message_created(self, message: Message) -> None:
        now = time.monotonic()
        if message.provider == TWILIO:
            self._plan_sms(message, now)
        else:
            self._plan_email(message, now)

    def _u(self, *key: object) -> float:
        return unit(self.seed, *key)

    def _plan_sms(self, m: Message, now: float) -> None:
        sent_at = now + 0.2 + 2.3 * self._u("sent", m.id)
        final_at = now + 0.5 + 5.5 * self._u("final", m.id)
        wall = time.time() - now
        self.timeline.at(sent_at, self.provider.mark_sent, m, wall + sent_at)
        self._twilio_status(m, "sent", sent_at, None)
        if m.to in self.facts.unreachable_phones:
            status, code = (
                ("undelivered", "30003") if self._u("why", m.id) < 0.5 else ("failed", "30005")
            )
            self._twilio_status(m, status, final_at, code)
        else:
            self._twilio_status(m, "delivered", final_at, None)
            if self.on_delivered is not None:
                self.on_delivered(m, final_at)

    def _plan_email(self, m: Message, now: float) -> None:
        wall = time.time() - now
        processed_at = now + 0.1 + 1.4 * self._u("processed", m.id)
        final_at = now + 0.5 + 5.5 * self._u("final", m.id)
        self.sendgrid_event(m, "processed", processed_at, wall)
        with self._lock:
            suppressed = m.to in self._suppressed
        if suppressed:
            self.sendgrid_event(m, "dropped", final_at, wall, reason="Unsubscribed Address")
        elif m.to in self.facts.bouncing_emails:
            self.sendgrid_event(
                m, "bounce", final_at, wall, type="bounce", status="5.1.1", reason="550 unknown"
            )
            self.suppress(m.to)
        else:
            self.sendgrid_event(m, "delivered", final_at, wall, response="250 OK")
            if self._u("open", m.id) < 0.3:
                self.sendgrid_event(m, "open", final_at + 2 + 20 * self._u("opened", m.id), wall)
            if self.on_delivered is not None:
                self.on_delivered(m, final_at)

    def suppress(self, address: str) -> None:
        """SendGrid keeps a suppression list: later mail to it is dropped, not delivered."""
        with self._lock:
            self._suppressed.add(address)

    # -- Twilio ----------------------------------------------------------------------------------
    def _twilio_status(self, m: Message, status: str, at: float, error_code: str | None) -> None:
        if not m.status_callback:
            return
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "From": SHOP_NUMBER,
            "MessageSid": m.id,
            "MessageStatus": status,
            "SmsSid": m.id,
            "SmsStatus": status,
            "To": m.to,
        }
        if error_code is not None:
            params["ErrorCode"] = error_code
        self.planned[f"twilio {status}"] += 1
        for n in range(copies(self.seed, m.id, status)):
            delay = 0.0 if n == 0 else 0.2 + 8.0 * self._u("dup", m.id, status, n)
            self.timeline.at(
                at + delay, self._post_form, "twilio status", m.status_callback, params, 1
            )

    def twilio_inbound(self, url: str, params: dict[str, str], at: float, n_copies: int) -> None:
        for n in range(n_copies):
            delay = 0.0 if n == 0 else 0.3 + 6.0 * self._u("dup-in", params["MessageSid"], n)
            self.timeline.at(at + delay, self._post_form, "twilio inbound", url, params, 1)

    def _post_form(self, kind: str, url: str, params: dict[str, str], attempt: int) -> int | None:
        try:
            response = self.http.post(url, data=params, headers=self.twilio.headers(url, params))
            status: int | None = response.status_code
            outcome = str(status)
        except httpx.HTTPError as exc:
            status, outcome = None, type(exc).__name__
        self.deliveries[f"{kind} {outcome}"] += 1
        if (status is None or status >= 500) and attempt < MAX_ATTEMPTS:
            self.timeline.after(2 ** (attempt - 1), self._post_form, kind, url, params, attempt + 1)
        return status

    # -- SendGrid --------------------------------------------------------------------------------
    def sendgrid_event(
        self, m: Message, event: str, at: float, wall_offset: float, **fields: str
    ) -> None:
        payload: dict[str, Any] = {
            "email": m.to,
            "event": event,
            "sg_event_id": base64.urlsafe_b64encode(secrets.token_bytes(16)).decode()[:22],
            "sg_message_id": f"{m.id}.filterdrecv-chaos-{secrets.token_hex(4)}",
            "smtp-id": f"<{m.id}@chaos.sendgrid.test>",
            "timestamp": int(wall_offset + at),
            **fields,
        }
        if m.survey_id is not None:
            payload["survey_id"] = str(m.survey_id)
        self.planned[f"sendgrid {event}"] += 1
        n = copies(self.seed, m.id, event)
        with self._lock:
            for k in range(n):
                delay = 0.0 if k == 0 else 0.2 + 8.0 * self._u("dup", m.id, event, k)
                self._outbox.append((at + delay, payload))
        self._start_flushing()

    def _start_flushing(self) -> None:
        with self._lock:
            if self._flushing:
                return
            self._flushing = True
        self.timeline.after(0.25, self._flush)

    def _flush(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [e for at, e in self._outbox if at <= now]
            self._outbox = [(at, e) for at, e in self._outbox if at > now]
            more = bool(self._outbox)
            if not more:
                self._flushing = False
        for start in range(0, len(due), 100):
            self._post_batch(due[start : start + 100], 1)
        if more:
            self.timeline.after(0.25, self._flush)

    def pending_events(self) -> int:
        with self._lock:
            return len(self._outbox)

    def _post_batch(self, events: list[dict[str, Any]], attempt: int) -> None:
        body = json.dumps(events)
        try:
            response = self.http.post(
                self.sendgrid_url, content=body, headers=self.sendgrid.headers(body)
            )
            status: int | None = response.status_code
            outcome = str(status)
        except httpx.HTTPError as exc:
            status, outcome = None, type(exc).__name__
        self.deliveries[f"sendgrid events {outcome}"] += 1
        if (status is None or status >= 500) and attempt < MAX_ATTEMPTS:
            self.timeline.after(2 ** (attempt - 1), self._post_batch, events, attempt + 1)

    def spam_report(self, m: Message, at: float) -> None:
        self.sendgrid_event(m, "spamreport", at, time.time() - time.monotonic())
        self.suppress(m.to)
