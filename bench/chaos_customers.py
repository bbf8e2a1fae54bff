"""The simulated customers of the chaos run: what people do with the messages they receive.

When the fake provider delivers an invitation (or the reminder), its recipient may answer after
a while: by SMS, a signed Twilio inbound webhook with the score (some first write something
unreadable and get re-prompted), then often the follow-up comment; by email, opening the score
link from the message the provider received (a GET, as a mail scanner would) and posting the
score on the answer page, then often the comment. A few reply STOP, click unsubscribe or report
spam. Each customer talks to the answer page from their own loopback address.

Every answer the product acknowledged is remembered (``acts``), so that answers stored more
often than given can be counted afterwards.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from bench.chaos_shop import ShopCustomer
from bench.chaos_timeline import Timeline
from bench.fakes.delivery import SHOP_NUMBER, Callbacks, copies
from bench.fakes.faults import unit
from bench.fakes.provider import TWILIO, FakeProvider, Message

__all__ = ["Customers"]

log = logging.getLogger(__name__)

ANSWER_INVITATION = 0.40
ANSWER_REMINDER = 0.30
COMMENT = 0.70
UNREADABLE_FIRST = 0.05
SMS_STOP = 0.03
EMAIL_UNSUBSCRIBE = 0.015
EMAIL_SPAM = 0.01
MAX_ATTEMPTS = 5

_LINK = re.compile(r"(https?://[^\s\"'<>]+/s/([A-Za-z0-9._~%-]+))\?score=(\d{1,2})")
_UNSUBSCRIBE = re.compile(r"https?://[^\s\"'<>]+/s/[A-Za-z0-9._~%-]+/unsubscribe")
_COMMENTS = ("Fast delivery", "Arrived damaged", "Good value", "Support never answered")


class Customers:
    def __init__(
        self,
        *,
        timeline: Timeline,
        callbacks: Callbacks,
        provider: FakeProvider,
        customers: dict[str, ShopCustomer],
        web_base: str,
        seed: int,
    ) -> None:
        self.timeline = timeline
        self.callbacks = callbacks
        self.provider = provider
        self.web_base = web_base.rstrip("/")
        self.seed = seed
        self.by_contact: dict[str, ShopCustomer] = {}
        for customer in customers.values():
            if customer.phone:
                self.by_contact[customer.phone] = customer
            if customer.email:
                self.by_contact[customer.email.lower()] = customer
        self._lock = threading.Lock()
        self._received: Counter[str] = Counter()  # messages per recipient so far
        self._answered: set[int] = set()  # surveys this run's customers decided to answer
        self.acts: dict[int, list[str]] = {}  # survey id -> answers the product took
        self.counts: Counter[str] = Counter()

    # -- reacting to a delivered message ---------------------------------------------------------
    def on_delivered(self, message: Message, at: float) -> None:
        customer = self.by_contact.get(message.to.lower())
        if customer is None or message.survey_id is None:
            return
        with self._lock:
            nth = self._received[message.to]
            self._received[message.to] += 1
            already = message.survey_id in self._answered
        u = unit(self.seed, "react", message.to, nth)
        sms = message.provider == TWILIO
        if nth == 0 and sms and u < SMS_STOP:
            self.counts["STOP replies"] += 1
            self.timeline.at(
                at + 1 + 20 * unit(self.seed, "when", message.id), self._stop, customer, message
            )
            return
        if nth == 0 and not sms and u < EMAIL_UNSUBSCRIBE:
            self.counts["unsubscribe clicks"] += 1
            self.timeline.at(
                at + 1 + 20 * unit(self.seed, "when", message.id),
                self._unsubscribe,
                customer,
                message,
                1,
            )
            return
        if nth == 0 and not sms and u < EMAIL_UNSUBSCRIBE + EMAIL_SPAM:
            self.counts["spam reports"] += 1
            self.callbacks.spam_report(message, at + 2 + 20 * unit(self.seed, "when", message.id))
            return
        share = ANSWER_INVITATION if nth == 0 else ANSWER_REMINDER
        if already or unit(self.seed, "answer", message.to, nth) >= share:
            return
        with self._lock:
            self._answered.add(message.survey_id)
        score = int(11 * unit(self.seed, "score", message.to))
        when = at + 2 + 30 * unit(self.seed, "when", message.id)
        if sms:
            self.counts["SMS answers"] += 1
            self._sms_answer(customer, message, score, when)
        else:
            self.counts["answer-page answers"] += 1
            self.timeline.at(when, self._web_answer, customer, message, score, 1)

    # -- SMS -------------------------------------------------------------------------------------
    def _inbound(self, customer: ShopCustomer, text: str, at: float, survey_id: int | None) -> None:
        assert customer.phone is not None
        sid = "SM" + secrets.token_hex(16)
        params = {
            "AccountSid": self.callbacks.account_sid,
            "ApiVersion": "2010-04-01",
            "Body": text,
            "From": customer.phone,
            "MessageSid": sid,
            "NumMedia": "0",
            "NumSegments": "1",
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "SmsStatus": "received",
            "To": SHOP_NUMBER,
        }
        url = f"{self.web_base}/webhooks/twilio/inbound"
        n = copies(self.seed, sid)

        def deliver() -> None:
            status = self.callbacks._post_form("twilio inbound", url, params, 1)
            if status == 200 and survey_id is not None:
                self._act(survey_id, f"sms:{sid}")

        self.timeline.at(at, deliver)
        if n > 1:
            self.callbacks.twilio_inbound(
                url, params, at + 0.3 + 5 * unit(self.seed, "dup", sid), n - 1
            )

    def _sms_answer(self, customer: ShopCustomer, message: Message, score: int, at: float) -> None:
        key = message.to
        if unit(self.seed, "unreadable", key) < UNREADABLE_FIRST:
            self._inbound(customer, "maybe later?", at, None)
            at += 2 + 3 * unit(self.seed, "again", key)
        style = int(3 * unit(self.seed, "style", key))
        text = (f"{score}", f"{score}/10", f" {score}!")[style]
        self._inbound(customer, text, at, message.survey_id)
        if unit(self.seed, "comment", key) < COMMENT:
            comment = _COMMENTS[int(len(_COMMENTS) * unit(self.seed, "which", key))]
            self._inbound(
                customer, comment, at + 1 + 5 * unit(self.seed, "later", key), message.survey_id
            )

    def _stop(self, customer: ShopCustomer, message: Message) -> None:
        assert customer.phone is not None
        self.provider.opt_out(customer.phone)  # the STOP passes through Twilio, which learns it
        self._inbound(customer, "STOP", time.monotonic(), None)

    # -- the answer page -------------------------------------------------------------------------
    def _client(self, customer: ShopCustomer) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=customer.source_ip)
        return httpx.Client(transport=transport, timeout=15.0, follow_redirects=False)

    def _retry(
        self,
        attempt: int,
        response: httpx.Response | None,
        fn: Callable[..., object],
        *args: object,
    ) -> None:
        if attempt >= MAX_ATTEMPTS:
            self.counts["answer page: gave up"] += 1
            return
        wait = 1.0
        if response is not None and response.headers.get("Retry-After", "").isdigit():
            wait = float(response.headers["Retry-After"])
        self.timeline.after(wait * attempt, fn, *args, attempt + 1)

    def _web_answer(
        self, customer: ShopCustomer, message: Message, score: int, attempt: int
    ) -> None:
        links = {int(s): (url, token) for url, token, s in _LINK.findall(message.body)}
        if score not in links:
            self.counts["answer page: no link in the email"] += 1
            return
        url, _ = links[score]
        path = urlsplit(url).path
        with self._client(customer) as client:
            try:
                client.get(f"{self.web_base}{path}", params={"score": score})  # what a scanner sees
                posted = client.post(f"{self.web_base}{path}", data={"score": str(score)})
            except httpx.HTTPError:
                self._retry(attempt, None, self._web_answer, customer, message, score)
                return
            self.counts[f"answer page score: HTTP {posted.status_code}"] += 1
            if posted.status_code in (429,) or posted.status_code >= 500:
                self._retry(attempt, posted, self._web_answer, customer, message, score)
                return
            if posted.status_code != 303 or message.survey_id is None:
                return
            self._act(message.survey_id, f"web score {score}")
        if unit(self.seed, "comment", message.to) < COMMENT:
            comment = _COMMENTS[int(len(_COMMENTS) * unit(self.seed, "which", message.to))]
            later = 1 + 5 * unit(self.seed, "later", message.to)
            self.timeline.after(later, self._web_comment, customer, message, path, comment, 1)

    def _web_comment(
        self, customer: ShopCustomer, message: Message, path: str, comment: str, attempt: int
    ) -> None:
        with self._client(customer) as client:
            try:
                posted = client.post(f"{self.web_base}{path}", data={"comment": comment})
            except httpx.HTTPError:
                self._retry(attempt, None, self._web_comment, customer, message, path, comment)
                return
        self.counts[f"answer page comment: HTTP {posted.status_code}"] += 1
        if posted.status_code == 429 or posted.status_code >= 500:
            self._retry(attempt, posted, self._web_comment, customer, message, path, comment)
            return
        if posted.status_code == 303 and message.survey_id is not None:
            self._act(message.survey_id, "web comment")

    def _unsubscribe(self, customer: ShopCustomer, message: Message, attempt: int) -> None:
        found = _UNSUBSCRIBE.search(message.body)
        if found is None:
            self.counts["unsubscribe: no link in the email"] += 1
            return
        path = urlsplit(found.group(0)).path
        with self._client(customer) as client:
            try:
                posted = client.post(
                    f"{self.web_base}{path}",
                    content=b"List-Unsubscribe=One-Click",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
            except httpx.HTTPError:
                self._retry(attempt, None, self._unsubscribe, customer, message)
                return
        self.counts[f"unsubscribe: HTTP {posted.status_code}"] += 1
        if posted.status_code == 429 or posted.status_code >= 500:
            self._retry(attempt, posted, self._unsubscribe, customer, message)
            return
        self.callbacks.suppress(message.to)

    def _act(self, survey_id: int, what: str) -> None:
        with self._lock:
            self.acts.setdefault(survey_id, []).append(what)
