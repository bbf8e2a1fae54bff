"""The simulated shop of the chaos run: its customers, orders and events, and their delivery.

:func:`make_plan` builds everything from the seed: purchases at a steady rate, their fulfilment
and delivery events (some arriving before the purchase itself), 10% of events repeated,
cancellations, consent revocations and erasures at random moments after the purchase (before,
during or after the survey's send), a few test orders and returning customers. :class:`Shop`
sends the plan through the public ways in: the dramatiq actor ``ingest_event`` on queue
``events`` (as a shop would enqueue it, with its own Redis client) and ``POST /v1/events``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dramatiq
import httpx
import phonenumbers
import redis
from dramatiq.brokers.redis import RedisBroker

from bench.chaos_timeline import Timeline

__all__ = ["OrderPlan", "PlannedEvent", "Shop", "ShopCustomer", "ShopPlan", "make_plan"]

log = logging.getLogger(__name__)

DUPLICATE_SHARE = 0.10
CANCEL_SHARE = 0.05
REVOKE_SHARE = 0.05
ERASE_SHARE = 0.01
LATE_PURCHASE_SHARE = 0.08  # the purchase event arrives after its delivery event
NO_DELIVERY_SHARE = 0.10  # anchored on the time-out instead
RETURNING_SHARE = 0.05
TEST_ORDER_SHARE = 0.01
QUEUE_SHARE = 0.6  # the rest goes through POST /v1/events
AT_SEND_SHARE = 1 / 3  # disruptions timed to the provider receiving the survey's message
SEND_HOLD = 2.0  # seconds the provider then takes to answer, as a slow one would
SHOP_CLOCK_SKEWS = (-2.0, 0.0, 2.0)
#: Events whose moment of becoming visible (committed) the run records.
WATCHED = frozenset({"consent.revoked", "customer.erased", "order.cancelled", "order.refunded"})
#: Cancellations, revocations and erasures come this many seconds after the purchase at most:
#: with a delay of seconds, that spreads them before, during and after the send.
DISRUPTION_WINDOW = 25.0

_COUNTRIES = (  # country, zone, locale, mobile prefix, digits after it
    ("DE", "Europe/Berlin", "de-DE", "+4915", 9),
    ("RO", "Europe/Bucharest", "ro-RO", "+4072", 7),
    ("FR", "Europe/Paris", "fr-FR", "+336", 8),
    ("NL", "Europe/Amsterdam", "en-GB", "+316", 8),
)
_CATEGORIES = ("electronics", "fashion", "home", "books", "toys")


@dataclass
class ShopCustomer:
    key: str
    index: int
    email: str | None
    phone: str | None
    consent_email: bool
    consent_sms: bool
    country: str
    timezone: str
    locale: str
    previous_orders: int
    # Facts about the person and their devices, not known to the product.
    landline: bool = False  # the provider refuses the number (Twilio 21614)
    unreachable: bool = False  # accepted, then "undelivered"
    bouncing: bool = False  # the mailbox bounces

    @property
    def source_ip(self) -> str:
        """The customer's own loopback address, so per-client limits see many clients."""
        n = self.index
        return f"127.{1 + (n // 62500) % 250}.{(n // 250) % 250}.{2 + n % 250}"


@dataclass
class PlannedEvent:
    at: float  # seconds after the start, when it reaches us
    occurred: float  # seconds after the start, when it happened at the shop
    body: dict[str, Any]  # the event without its times
    path: str  # "queue" | "http"
    kind: str
    order_id: str | None
    customer: str
    duplicate: bool = False
    # Sent when the provider first receives a message to one of these contacts, if that comes
    # before ``at``; then ``occurred`` is moved to that moment.
    trigger: tuple[str, ...] = ()
    original: PlannedEvent | None = None  # for a repeat: the event it repeats

    @property
    def source(self) -> PlannedEvent:
        return self.original or self

    @property
    def event_id(self) -> str:
        return str(self.body["event_id"])

    def event(self, start_wall: float) -> dict[str, Any]:
        """The event as sent, its times counted from the wall-clock start of the run (a repeat
        is sent exactly as the first copy was)."""
        first = self.source
        event = {**first.body, "occurred_at": _iso(start_wall + first.occurred)}
        consent = event.get("consent")
        if isinstance(consent, dict) and "captured" in consent:
            consent = dict(consent)
            consent["captured_at"] = _iso(start_wall + consent.pop("captured"))
            event["consent"] = consent
        return event


@dataclass
class OrderPlan:
    order_id: str
    customer: str
    purchased_at: float  # seconds after the start (shop time)
    test: bool = False
    disruptions: list[tuple[str, float, str]] = field(default_factory=list)  # kind, at, event id


@dataclass
class ShopPlan:
    customers: dict[str, ShopCustomer]
    orders: dict[str, OrderPlan]
    events: list[PlannedEvent]
    erasures: dict[str, str]  # customer key -> event id of its erasure
    erased_at: dict[str, float]  # customer key -> when the shop erased them (seconds)
    revocations: dict[str, list[str]]  # customer key -> event ids
    cancellations: dict[str, str]  # order id -> event id

    @property
    def duration(self) -> float:
        return max((e.at for e in self.events), default=0.0)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def _phone(rng: random.Random, prefix: str, width: int, taken: set[str]) -> str:
    for _ in range(1000):
        candidate = f"{prefix}{rng.randrange(10**width):0{width}d}"
        number = phonenumbers.parse(candidate)
        if (
            candidate not in taken
            and phonenumbers.is_valid_number(number)
            and phonenumbers.number_type(number) == phonenumbers.PhoneNumberType.MOBILE
        ):
            taken.add(candidate)
            return candidate
    raise RuntimeError(f"no valid mobile number after {prefix}")


def _new_customer(rng: random.Random, seed: int, index: int, taken: set[str]) -> ShopCustomer:
    country, tz, locale, prefix, width = _COUNTRIES[rng.randrange(len(_COUNTRIES))]
    roll = rng.random()
    # Consent: email only, SMS only, both, or neither (no_consent).
    consent_email, consent_sms = (
        (True, False) if roll < 0.45 else (False, True) if roll < 0.7 else (True, True)
    )
    if rng.random() < 0.08:
        consent_email = consent_sms = False
    has_phone = rng.random() < 0.85
    email: str | None = f"chaos{seed}.c{index}@mail.example"
    if rng.random() < 0.04:
        email = None if rng.random() < 0.5 else f"broken-address-{index}"  # missing or invalid
    return ShopCustomer(
        key=f"cc-{seed}-{index}",
        index=index,
        email=email,
        phone=_phone(rng, prefix, width, taken) if has_phone else None,
        consent_email=consent_email,
        consent_sms=consent_sms,
        country=country,
        timezone=tz,
        locale=locale,
        previous_orders=rng.choice((0, 0, 0, 1, 2, 5)),
        landline=rng.random() < 0.02,
        unreachable=rng.random() < 0.03,
        bouncing=rng.random() < 0.03,
    )


def _customer_payload(c: ShopCustomer) -> dict[str, Any]:
    return {
        "id": c.key,
        "email": c.email,
        "phone": c.phone,
        "first_name": "Alex",
        "locale": c.locale,
        "timezone": c.timezone,
        "country": c.country,
        "previous_orders": c.previous_orders,
    }


def make_plan(purchases: int, seed: int, rate: float) -> ShopPlan:
    """Every event of the run, with the moment it reaches us (seconds after the start)."""
    rng = random.Random(seed)
    customers: dict[str, ShopCustomer] = {}
    orders: dict[str, OrderPlan] = {}
    events: list[PlannedEvent] = []
    erasures: dict[str, str] = {}
    erased_at: dict[str, float] = {}
    revocations: dict[str, list[str]] = {}
    cancellations: dict[str, str] = {}
    taken: set[str] = set()
    counter = iter(range(10**9))

    def add(
        at: float, occurred: float, kind: str, body: dict[str, Any], order: str | None, who: str
    ) -> PlannedEvent:
        event_id = f"chaos-{seed}-{next(counter)}"
        event = {"type": kind, "event_id": event_id, **body}
        path = "queue" if rng.random() < QUEUE_SHARE else "http"
        # The shop runs several servers whose clocks disagree by a second or two.
        skewed = occurred + rng.choice(SHOP_CLOCK_SKEWS)
        planned = PlannedEvent(at, skewed, event, path, kind, order, who)
        events.append(planned)
        return planned

    def disrupt(
        label: str, kind: str, body: dict[str, Any], t: float, order: OrderPlan, who: ShopCustomer
    ) -> PlannedEvent:
        """An event at a random moment after the purchase, or (a third of them) at the moment
        the provider receives the survey's first message, held there a while."""
        at_send = rng.random() < AT_SEND_SHARE
        at = t + DISRUPTION_WINDOW * (1.0 if at_send else rng.random())
        planned = add(at, at, kind, body, order.order_id, who.key)
        if at_send:
            planned.trigger = tuple(c for c in (who.phone, who.email) if c)
        order.disruptions.append((label, at, planned.event_id))
        return planned

    for i in range(purchases):
        if customers and rng.random() < RETURNING_SHARE:
            customer = rng.choice(list(customers.values()))
        else:
            customer = _new_customer(rng, seed, len(customers), taken)
            customers[customer.key] = customer
        t = i / rate + rng.random() * 0.5 / rate
        order_id = f"co-{seed}-{i}"
        test = rng.random() < TEST_ORDER_SHARE
        consent: dict[str, Any] = {
            "email": customer.consent_email,
            "sms": customer.consent_sms,
            "source": "checkout-checkbox",
            "text_version": "2026-03",
            "captured": t - 5.0,  # at checkout, just before the purchase
        }
        purchase = {
            "order_id": order_id,
            "customer": _customer_payload(customer),
            "consent": consent,
            "total": {"amount": f"{rng.uniform(5, 400):.2f}", "currency": "EUR"},
            "items": [{"sku": f"SKU-{i}", "category": rng.choice(_CATEGORIES), "quantity": 1}],
            "sales_channel": rng.choice(("web", "app")),
            "test": test,
        }
        late = rng.random() < LATE_PURCHASE_SHARE
        arrival = t + (2.0 + 4.0 * rng.random() if late else 0.0)
        bought = add(arrival, t, "purchase.completed", purchase, order_id, customer.key)
        plan = orders[order_id] = OrderPlan(order_id, customer.key, bought.occurred, test)
        if rng.random() < 0.8:
            fulfilled = t + 0.3 + 1.5 * rng.random()
            add(
                fulfilled,
                fulfilled,
                "order.fulfilled",
                {"order_id": order_id},
                order_id,
                customer.key,
            )
        if rng.random() >= NO_DELIVERY_SHARE:
            delivered = t + 1.0 + 4.0 * rng.random()
            add(
                delivered,
                delivered,
                "order.delivered",
                {"order_id": order_id},
                order_id,
                customer.key,
            )
        if rng.random() < CANCEL_SHARE:
            kind = rng.choice(("order.cancelled", "order.refunded"))
            cancelled = disrupt("cancellation", kind, {"order_id": order_id}, t, plan, customer)
            cancellations[order_id] = cancelled.event_id
        if rng.random() < REVOKE_SHARE and (customer.consent_email or customer.consent_sms):
            channels = [
                ch
                for ch, on in (("email", customer.consent_email), ("sms", customer.consent_sms))
                if on
            ]
            chosen = channels if rng.random() < 0.25 else [channels[0]]
            body = {
                "customer": {"id": customer.key},
                # Each channel's consent after the event: false for the revoked ones.
                "consent": {ch: False for ch in chosen} | {"source": "preference-center"},
            }
            revoked = disrupt("revocation", "consent.revoked", body, t, plan, customer)
            revocations.setdefault(customer.key, []).append(revoked.event_id)
        if rng.random() < ERASE_SHARE and customer.key not in erasures:
            body = {"customer": {"id": customer.key}}
            erased = disrupt("erasure", "customer.erased", body, t, plan, customer)
            erasures[customer.key] = erased.event_id
            erased_at[customer.key] = erased.occurred

    originals = list(events)
    for original in originals:
        if rng.random() < DUPLICATE_SHARE:
            path = "queue" if rng.random() < QUEUE_SHARE else "http"
            events.append(
                PlannedEvent(
                    original.at + 0.1 + 20.0 * rng.random(),
                    original.occurred,
                    original.body,
                    path,
                    original.kind,
                    original.order_id,
                    original.customer,
                    duplicate=True,
                    original=original,
                )
            )
    events.sort(key=lambda e: e.at)
    return ShopPlan(customers, orders, events, erasures, erased_at, revocations, cancellations)


class Shop:
    """Sends the plan's events when they are due, each retried a bounded number of times while
    Redis or the web process cannot take it (a real shop would do the same)."""

    MAX_ATTEMPTS = 30

    def __init__(
        self,
        plan: ShopPlan,
        timeline: Timeline,
        broker_url: str,
        web_base: str,
        ingest_token: str,
    ) -> None:
        self.plan = plan
        self.timeline = timeline
        self.broker = RedisBroker(url=broker_url)
        self.broker.declare_queue("events")
        self.events_url = f"{web_base}/v1/events"
        self.http = httpx.Client(timeout=30.0, headers={"Authorization": f"Bearer {ingest_token}"})
        self._lock = threading.Lock()
        self._http_batch: list[dict[str, Any]] = []
        self._triggers: dict[str, list[PlannedEvent]] = {}
        self._emitted: set[str] = set()
        self._watched: set[str] = set()
        self.visible_at: dict[str, float] = {}  # event id -> epoch when first seen committed
        self._probe: Callable[[list[str]], set[str]] | None = None
        self.sent: Counter[str] = Counter()  # "<path>" and "duplicates"
        self.results: Counter[str] = Counter()  # HTTP per-item status
        self.retries: Counter[str] = Counter()
        self.failed: list[str] = []  # event ids that never got in
        self.started = 0.0
        self.start_wall = 0.0

    def start(self, at: float) -> None:
        """Send the plan from monotonic time ``at`` on."""
        self.started = at
        self.start_wall = time.time() + (at - time.monotonic())
        for planned in self.plan.events:
            if planned.trigger:
                with self._lock:
                    for contact in planned.trigger:
                        self._triggers.setdefault(contact, []).append(planned)
            self.timeline.at(at + planned.at, self._emit, planned)
        self.timeline.at(at, self._flush_http)

    def watch(self, probe: Callable[[list[str]], set[str]], every: float = 0.25) -> None:
        """Note when each disruption becomes visible in the product's database (committed), by
        asking ``probe`` which of the given event ids the ledger holds: a revocation counts
        from that moment on, not from the earlier moment its row was written inside a longer
        transaction."""
        self._probe = probe
        self.timeline.after(every, self._look, every)

    def _look(self, every: float) -> None:
        assert self._probe is not None
        with self._lock:
            waiting = sorted(self._watched - self.visible_at.keys())
        if waiting:
            seen = time.time()
            try:
                found = self._probe(waiting)
            except Exception as exc:  # the database is busy: look again
                self.retries[f"watch {type(exc).__name__}"] += 1
                found = set()
            with self._lock:
                for event_id in found:
                    self.visible_at.setdefault(event_id, seen)
        with self._lock:
            more = bool(self._watched - self.visible_at.keys())
        now = time.monotonic()
        end = self.started + self.plan.duration
        if now < end + 5.0 or (more and now < end + 300.0):
            self.timeline.after(every, self._look, every)

    def on_provider_request(self, to: str) -> float:
        """The provider received a message to ``to``: send the events timed to that moment now,
        and say how long the provider should then take to answer."""
        with self._lock:
            due = [p for p in self._triggers.pop(to, []) if p.event_id not in self._emitted]
        if not due:
            return 0.0
        offset = time.monotonic() - self.started
        for planned in due:
            planned.at = planned.occurred = offset
            if planned.kind == "customer.erased":
                self.plan.erased_at[planned.customer] = offset
            self.timeline.after(0.0, self._emit, planned)
        self.sent["timed to a send"] += len(due)
        return SEND_HOLD

    def close(self) -> None:
        self.http.close()
        self.broker.close()

    def _emit(self, planned: PlannedEvent) -> None:
        with self._lock:
            if not planned.duplicate:
                if planned.event_id in self._emitted:
                    return  # already sent at the moment of a send
                self._emitted.add(planned.event_id)
            self.sent["duplicates" if planned.duplicate else planned.kind] += 1
            self.sent[planned.path] += 1
            if planned.kind in WATCHED and not planned.duplicate:
                self._watched.add(planned.event_id)
        event = planned.event(self.start_wall)
        if planned.path == "queue":
            self._enqueue(event, 1)
        else:
            with self._lock:
                self._http_batch.append(event)

    def _enqueue(self, event: dict[str, Any], attempt: int) -> None:
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name="events", actor_name="ingest_event", args=(event,), kwargs={}, options={}
        )
        try:
            self.broker.enqueue(message)
        except (redis.RedisError, dramatiq.errors.ConnectionError) as exc:
            self.retries[f"queue {type(exc).__name__}"] += 1
            if attempt >= self.MAX_ATTEMPTS:
                self.failed.append(str(event["event_id"]))
                return
            self.timeline.after(min(0.5 * attempt, 3.0), self._enqueue, event, attempt + 1)

    def _flush_http(self) -> None:
        with self._lock:
            batch, self._http_batch = self._http_batch, []
        if batch:
            self._post(batch, 1)
        if self.pending_http() or time.monotonic() < self.started + self.plan.duration + 1.0:
            self.timeline.after(0.2, self._flush_http)

    def pending_http(self) -> int:
        with self._lock:
            return len(self._http_batch)

    def _post(self, batch: list[dict[str, Any]], attempt: int) -> None:
        try:
            response = self.http.post(self.events_url, json=batch)
            status: int | None = response.status_code
        except httpx.HTTPError as exc:
            status = None
            self.retries[f"http {type(exc).__name__}"] += 1
        if status is not None and status < 500 and status != 429:
            again = []
            for event, item in zip(batch, response.json().get("results", []), strict=False):
                self.results[str(item.get("status"))] += 1
                if _ours_to_retry(item):
                    again.append(event)  # a failure on the product's side: send it again
            if not again:
                return
            self.retries["http item failed on the product's side"] += len(again)
            batch = again
        elif status is not None:
            self.retries[f"http {status}"] += 1
        if attempt >= self.MAX_ATTEMPTS:
            self.failed.extend(str(e["event_id"]) for e in batch)
            return
        self.timeline.after(min(0.5 * attempt, 3.0), self._post, batch, attempt + 1)


def _ours_to_retry(item: dict[str, Any]) -> bool:
    """A rejected item whose error is the product's own (``internal_error``): nothing of it was
    kept, and the API says it is worth sending again."""
    errors = item.get("errors") or []
    return item.get("status") == "rejected" and any(
        isinstance(e, dict) and e.get("code") == "internal_error" for e in errors
    )
