"""Shop platforms' webhooks (Shopify, WooCommerce): a verified delivery in, shop events out.

Each platform's adapter (``ingest/shopify``, ``ingest/woocommerce``) verifies its signature and
maps its payload to our shop events (``ingest/schema.py``). What they share is here, the same
four steps as the provider webhooks of ``dispatch/responses.py``:

1. **Store** the delivery raw in the inbound ledger under (platform, shop/delivery id), with the
   keyed pseudonym of the customer it names (``subject_key``): a redelivery is a duplicate and
   changes nothing, and an erasure finds the row before it is even applied.
2. **Map** the stored payload to events (each adapter's pure ``map``). A payload that cannot be
   mapped becomes a dead letter with the reason, and the platform is answered 200: sending the
   same payload again would not help, and a platform that sees errors retries, then disables the
   webhook.
3. **Ingest** the events with ``ingest_in_session``, each in its own savepoint, in one
   transaction that holds the raw row: the same validation, ledger, idempotency and per-event
   outcomes as ``POST /v1/events``. Event ids are derived from the platform's resource ids, so
   the same order seen twice (a redelivery under a new id, ``orders/create`` then
   ``orders/paid``) is a duplicate. An event the schema rejects is a dead letter too. An error on
   our side keeps the raw row unapplied (``attempts``, ``retry_at``, the error) and is answered
   500, so the platform sends it again; :func:`replay_unhandled` applies it again meanwhile.
4. **Finish**: ``handled_at`` and the result; the payload stays only while the row is tied to a
   customer who is not erased (where erasure, export and the retention pruning find it).

A ``shop/redact`` (erase everything of a shop) may take minutes: it is stored and answered 200
``queued`` at once, and carried out by the scheduler's replay, a bounded number of customers a
pass, the stored request staying unhandled until the last pass (see :func:`handle`).

Event ids never hold a customer's id: the ledger keeps event ids after an erasure.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from config import OperatorConfig
from ingest import apply
from ingest.service import (
    SHOP_SOURCE,
    IngestResult,
    ingest_batch,
    ingest_in_session,
    store_dead_letter,
)
from models import Customer, DeadLetter, InboundEvent, Order, utcnow
from models.erasure import erased_at, subject_key
from models.inbound import claim_inbound_event

__all__ = [
    "Adapter",
    "Delivery",
    "Mapped",
    "Received",
    "Redaction",
    "ShopErasure",
    "Unmappable",
    "amount",
    "erase_shop_customers",
    "handle",
    "keyed",
    "numeric_id",
    "receive",
    "replay_dead_letter",
    "replay_unhandled",
    "text",
    "timestamp",
]

log = logging.getLogger(__name__)

ERASE_BATCH: Final = 500
SHOP_ERASE_PER_PASS: Final = 2000  # customers a replay pass erases of a shop/redact, at most
# How long a replay pass holds a shop/redact it is carrying out; a pass that died meanwhile is
# taken over by the next one after that.
SHOP_ERASE_LEASE: Final = timedelta(minutes=10)
_PAGE: Final = 5000
_REPLAY_MAX_ATTEMPTS: Final = 20  # about three days of doubling pauses, as for provider webhooks


class Unmappable(ValueError):
    """The payload cannot be turned into shop events; the message says why (no personal data)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One verified webhook delivery: what the platform sent, as stored raw."""

    platform: str  # the ledger source: "shopify" | "woocommerce"
    delivery_id: str  # the platform's unique id of this delivery
    topic: str
    shop: str  # the shop's domain or site, "" when the platform did not say
    body: Any  # the JSON body, or None when it was not JSON
    received_at: datetime

    @property
    def ledger_id(self) -> str:
        """The ledger's external id: the shop, then the delivery id (a shop's rows share a
        prefix, which is how ``shop/redact`` finds them)."""
        return f"{self.shop[:100]}/{self.delivery_id[:99]}"

    def payload(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "shop": self.shop,
            "delivery_id": self.delivery_id,
            "received_at": self.received_at.isoformat(),
            "body": self.body,
        }

    @classmethod
    def from_payload(cls, platform: str, payload: Mapping[str, Any]) -> Delivery:
        return cls(
            platform=platform,
            delivery_id=str(payload.get("delivery_id") or ""),
            topic=str(payload.get("topic") or ""),
            shop=str(payload.get("shop") or ""),
            body=payload.get("body"),
            received_at=datetime.fromisoformat(str(payload["received_at"])),
        )


@dataclass(frozen=True, slots=True)
class Redaction:
    """More customers a request to erase names, found only when it is applied (the mapping
    reads no database): the customers of ``orders``, and the records whose id starts with
    ``guest_prefix`` holding one of ``emails`` or ``phones`` (normalised, as stored)."""

    orders: tuple[str, ...] = ()
    guest_prefix: str | None = None
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Mapped:
    """What a delivery means: shop events to ingest, in order, or a note of why there are none."""

    events: tuple[dict[str, Any], ...] = ()
    result: str = ""  # said when there are no events ("ignored: status pending")
    erase_shop: bool = False  # shop/redact: erase every customer this shop's deliveries named
    notice: str | None = None  # a line for the operators' log; never personal data
    # customers/redact: a customer.erased is added for each customer it finds
    redaction: Redaction | None = None


@dataclass(frozen=True, slots=True)
class Adapter:
    """A platform: its ledger source, its mapping, and whom a delivery is about."""

    platform: str
    map: Callable[[Delivery, OperatorConfig], Mapped]
    # The shop's customer id a delivery names (for the raw row's subject key), or None. Never
    # raises: it runs before the payload is known to be usable.
    subject: Callable[[Delivery], str | None]

    def __post_init__(self) -> None:
        # Erasure searches these sources' deliveries not applied yet (ingest.apply).
        if self.platform not in apply.PLATFORM_SOURCES:
            raise ValueError(f"{self.platform!r} is not in ingest.apply.PLATFORM_SOURCES")


# "queued": stored, and left to the scheduler's replay (a shop/redact, see handle()).
Status = Literal["applied", "duplicate", "already", "dead_letter", "failed", "queued"]


@dataclass(frozen=True, slots=True)
class Received:
    """What became of a delivery."""

    status: Status
    row_id: int | None = None
    result: str | None = None
    events: tuple[IngestResult, ...] = field(default_factory=tuple)
    dead_letter: int | None = None

    def answer(self) -> dict[str, Any]:
        """The body answered to the platform (ids and statuses only, nothing personal)."""
        out: dict[str, Any] = {"status": self.status, "result": self.result}
        if self.events:
            out["events"] = [{"event_id": r.event_id, "status": r.status} for r in self.events]
        if self.dead_letter is not None:
            out["dead_letter"] = self.dead_letter
        return out


# --------------------------------------------------------------------------------------------
# Small readers the adapters share
# --------------------------------------------------------------------------------------------


def numeric_id(value: object, path: str) -> str:
    """A platform's numeric id as decimal text: ``820982911946154508`` or ``"0820..."`` alike."""
    if isinstance(value, bool):
        raise Unmappable(f"{path}: expected a numeric id, got a boolean")
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return str(int(value))
    if value is None:
        raise Unmappable(f"{path}: missing")
    raise Unmappable(f"{path}: expected a numeric id, got {type(value).__name__}")


def text(value: object, limit: int) -> str | None:
    """A text field, trimmed and cut to ``limit``; ``None`` when absent or blank."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value[:limit] or None


def timestamp(value: object, path: str, *, naive_is_utc: bool = False) -> str:
    """An ISO 8601 time as given; the schema checks it. WooCommerce's ``*_gmt`` fields carry no
    offset (``naive_is_utc``)."""
    if not isinstance(value, str) or not value.strip():
        raise Unmappable(f"{path}: missing")
    value = value.strip()
    if naive_is_utc:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise Unmappable(f"{path}: not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            return value + "+00:00"
    return value


def amount(value: object, path: str) -> str:
    """A money amount as the decimal text the schema wants (platforms send strings)."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        raise Unmappable(f"{path}: missing")
    raise Unmappable(f"{path}: expected a decimal string, got {type(value).__name__}")


def keyed(*parts: str) -> str:
    """A short digest for an event id that must tell customers apart without naming them: the
    first part is a customer id, replaced by its keyed pseudonym before hashing, so the digest
    cannot be reversed by trying ids (the ledger keeps event ids after an erasure)."""
    first, *rest = parts
    material = "\n".join((subject_key(first), *rest))
    return hashlib.sha256(material.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------
# Store, then apply
# --------------------------------------------------------------------------------------------


def receive(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    adapter: Adapter,
    delivery: Delivery,
    *,
    now: datetime | None = None,
) -> Received:
    """Store, then apply: what a platform's webhook route calls once the signature holds."""
    now = now or utcnow()
    subject = adapter.subject(delivery)
    with factory() as session, session.begin():
        row_id = claim_inbound_event(
            session,
            source=adapter.platform,
            external_id=delivery.ledger_id,
            event_type=delivery.topic[:40],
            subject_key=subject_key(subject) if subject else None,
            payload=delivery.payload(),
        )
        if row_id is None:
            existing = session.execute(
                select(InboundEvent.id, InboundEvent.handled_at).where(
                    InboundEvent.source == adapter.platform,
                    InboundEvent.external_id == delivery.ledger_id,
                )
            ).one()
            if existing.handled_at is not None:
                return Received("duplicate", existing.id, "already received")
            row_id = existing.id  # an earlier attempt failed: this redelivery tries again
    return handle(factory, config, adapter, row_id, now=now, in_request=True)


def handle(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    adapter: Adapter,
    row_id: int,
    *,
    now: datetime | None = None,
    in_request: bool = False,
    shop_erase_limit: int = SHOP_ERASE_PER_PASS,
) -> Received:
    """Apply one stored delivery, once.

    A ``shop/redact`` is not carried out ``in_request`` (the platform's webhook call): erasing
    a whole shop can take minutes, longer than the platform waits for its answer. The stored
    delivery is left unhandled and due at once, and the replay (:func:`replay_unhandled`, on
    every scheduler pass) erases at most ``shop_erase_limit`` customers a pass until none is
    left (:func:`_erase_shop`)."""
    now = now or utcnow()
    with factory() as session:
        row = session.get(InboundEvent, row_id)
        if row is None or row.handled_at is not None:
            return Received("already", row_id)
        payload = row.payload
    if not isinstance(payload, dict):
        _finish(factory, row_id, "payload erased", now, keep=False)
        return Received("applied", row_id, "payload erased")
    delivery = Delivery.from_payload(adapter.platform, payload)
    try:
        mapped = adapter.map(delivery, config)
    except Unmappable as exc:
        return _dead_letter(factory, adapter, row_id, delivery, [str(exc)], now)
    if mapped.erase_shop:
        if in_request:
            _queue(factory, row_id, now)
            log.warning(
                "%s %s of shop %s stored (row %s): the scheduler erases the shop",
                adapter.platform,
                delivery.topic,
                delivery.shop,
                row_id,
            )
            return Received("queued", row_id, "shop erasure queued")
        return _erase_shop(factory, config, adapter, row_id, delivery, now, shop_erase_limit)
    return _ingest(factory, config, adapter, row_id, delivery, mapped, now)


def _ingest(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    adapter: Adapter,
    row_id: int,
    delivery: Delivery,
    mapped: Mapped,
    now: datetime,
) -> Received:
    results: list[IngestResult] = []
    with factory() as session, session.begin():
        locked = session.scalar(
            select(InboundEvent.id)
            .where(InboundEvent.id == row_id, InboundEvent.handled_at.is_(None))
            .with_for_update()
        )
        if locked is None:
            return Received("already", row_id)
        events = _with_redaction(session, adapter, delivery, mapped)
        results = [ingest_in_session(session, event, config, now) for event in events]
        failed = [r for r in results if r.retryable]
        if failed:
            _record_failure(session, row_id, "; ".join(r.outcome or "error" for r in failed), now)
            log.warning(
                "%s %s (row %s) not applied; the platform's retry or the replay applies it",
                adapter.platform,
                delivery.topic,
                row_id,
            )
            return Received("failed", row_id, "not applied", tuple(results))
        rejected = [r for r in results if r.status == "rejected"]
        if not rejected:
            result = _summary(results) or mapped.result
            _finish_in(session, row_id, result, now, keep=_keeps(session, adapter, delivery))
    if mapped.notice:
        log.warning("%s (webhook row %s)", mapped.notice, row_id)
    if rejected:
        problems = [f"{r.event_id}: {r.error}" for r in rejected]
        dead = _dead_letter(factory, adapter, row_id, delivery, problems, now)
        return Received("dead_letter", row_id, dead.result, tuple(results), dead.dead_letter)
    return Received("applied", row_id, _summary(results) or mapped.result, tuple(results))


def _with_redaction(
    session: Session, adapter: Adapter, delivery: Delivery, mapped: Mapped
) -> list[dict[str, Any]]:
    """The delivery's events, and a ``customer.erased`` for each further customer its
    :class:`Redaction` finds (not yet erased, not already named)."""
    events = list(mapped.events)
    redaction = mapped.redaction
    if redaction is None:
        return events
    found: list[ColumnElement[bool]] = [
        Customer.id.in_(
            select(Order.customer_id).where(
                Order.external_id.in_(redaction.orders), Order.customer_id.is_not(None)
            )
        )
    ]
    if redaction.guest_prefix and (redaction.emails or redaction.phones):
        found.append(
            and_(
                Customer.external_id.startswith(redaction.guest_prefix, autoescape=True),
                or_(Customer.email.in_(redaction.emails), Customer.phone.in_(redaction.phones)),
            )
        )
    named = {event["customer"]["id"] for event in events if event["type"] == "customer.erased"}
    customers = session.scalars(
        select(Customer.external_id)
        .where(Customer.erased_at.is_(None), or_(*found))
        .order_by(Customer.id)
    ).all()
    prefix = f"{adapter.platform}:{delivery.delivery_id[:99]}:redact"
    events += [
        {
            "type": "customer.erased",
            "event_id": f"{prefix}:{keyed(customer_id)}",
            "occurred_at": delivery.received_at.isoformat(),
            "customer": {"id": customer_id},
        }
        for customer_id in customers
        if customer_id not in named
    ]
    return events


def _summary(results: Iterable[IngestResult]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())[:40]


def _keeps(session: Session, adapter: Adapter, delivery: Delivery) -> bool:
    """The raw payload stays only while it is about a customer who is not erased: a row tied to
    no one (a fulfilment, a refund) holds a delivery address no erasure could find."""
    subject = adapter.subject(delivery)
    return subject is not None and erased_at(session, subject) is None


def _finish_in(session: Session, row_id: int, result: str, now: datetime, *, keep: bool) -> None:
    values: dict[str, object] = {
        "handled_at": now,
        "result": result[:40],
        "error": None,
        "retry_at": None,
    }
    if not keep:
        values.update(payload=None, subject_key=None)
    session.execute(
        update(InboundEvent)
        .where(InboundEvent.id == row_id, InboundEvent.handled_at.is_(None))
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def _finish(
    factory: sessionmaker[Session], row_id: int, result: str, now: datetime, *, keep: bool
) -> None:
    with factory() as session, session.begin():
        _finish_in(session, row_id, result, now, keep=keep)


def _record_failure(session: Session, row_id: int, error: str, now: datetime) -> None:
    from dispatch.responses import replay_pause  # it imports ingest.apply, as this module does

    attempts = (
        session.scalar(select(InboundEvent.attempts).where(InboundEvent.id == row_id)) or 0
    ) + 1
    session.execute(
        update(InboundEvent)
        .where(InboundEvent.id == row_id)
        .values(attempts=attempts, retry_at=now + replay_pause(attempts), error=error[:2000])
    )


def _dead_letter(
    factory: sessionmaker[Session],
    adapter: Adapter,
    row_id: int,
    delivery: Delivery,
    problems: list[str],
    now: datetime,
) -> Received:
    """Keep the platform's payload as a dead letter (listed by `nps-dispatch deadletters list`),
    keyed by its customer so that erasure deletes it; the raw row then keeps no payload."""
    letter: dict[str, Any] = {
        "event_id": f"{adapter.platform}:{delivery.delivery_id}",
        "platform": adapter.platform,
        "topic": delivery.topic,
        "shop": delivery.shop,
        "delivery_id": delivery.delivery_id,
        "received_at": delivery.received_at.isoformat(),
    }
    subject = adapter.subject(delivery)
    if subject is not None:
        letter["customer"] = {"id": subject}
    letter["body"] = delivery.body
    reason = f"{adapter.platform} {delivery.topic} not mapped: " + "; ".join(problems)
    letter_id = store_dead_letter(factory, letter, reason, source=adapter.platform)
    log.warning(
        "%s %s (row %s) kept as dead letter %s: %s",
        adapter.platform,
        delivery.topic,
        row_id,
        letter_id,
        "; ".join(problems)[:300],
    )
    result = f"dead letter {letter_id}"
    _finish(factory, row_id, result, now, keep=False)
    return Received("dead_letter", row_id, result, dead_letter=letter_id)


def replay_dead_letter(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    adapter: Adapter,
    letter: Mapping[str, Any],
    *,
    stored_at: datetime,
    now: datetime | None = None,
) -> IngestResult:
    """Map a platform's dead letter again and ingest its events (``nps-dispatch deadletters
    replay``): a payload the schema refused (a date too far ahead) or that an older version
    could not map is taken once the cause is gone. One result for the letter: ``accepted`` (its
    events were applied, or it maps to no event: the outcome says why), ``duplicate`` (all of
    them were applied already), else ``rejected`` or ``conflict`` with the reasons, and the
    letter stays. Letters written before they kept the delivery's time are dated by when they
    were stored."""
    event_id = str(letter.get("event_id") or "") or None
    received = letter.get("received_at")
    try:
        received_at = datetime.fromisoformat(received) if isinstance(received, str) else None
    except ValueError:
        received_at = None
    if received_at is None or received_at.tzinfo is None:
        received_at = stored_at if stored_at.tzinfo else stored_at.replace(tzinfo=UTC)
    delivery = Delivery(
        platform=adapter.platform,
        delivery_id=str(
            letter.get("delivery_id") or (event_id or "").removeprefix(f"{adapter.platform}:")
        ),
        topic=str(letter.get("topic") or ""),
        shop=str(letter.get("shop") or ""),
        body=letter.get("body"),
        received_at=received_at,
    )
    try:
        mapped = adapter.map(delivery, config)
    except Unmappable as exc:
        problem = f"{adapter.platform} {delivery.topic} not mapped: {exc}"
        return IngestResult(event_id, "rejected", error=problem)
    if mapped.erase_shop:
        # Only a request without its shop becomes a dead letter, and it cannot be mapped.
        problem = "a shop erasure is carried out from its stored webhook, not from a dead letter"
        return IngestResult(event_id, "rejected", error=problem)
    with factory() as session:
        events = _with_redaction(session, adapter, delivery, mapped)
    results = ingest_batch(factory, events, config, now) if events else []
    if mapped.notice:
        log.warning("%s (dead letter replay)", mapped.notice)
    failed = [r for r in results if r.retryable]
    if failed:
        label = "; ".join(r.outcome or "error" for r in failed)
        return IngestResult(
            event_id, "rejected", error=failed[0].error, outcome=label, retryable=True
        )
    for status in ("rejected", "conflict"):
        refused = [r for r in results if r.status == status]
        if refused:
            problems = "; ".join(f"{r.event_id}: {r.error}" for r in refused)
            return IngestResult(event_id, refused[0].status, error=problems)
    if results and all(r.status == "duplicate" for r in results):
        return IngestResult(event_id, "duplicate", outcome="already applied")
    return IngestResult(event_id, "accepted", outcome=_summary(results) or mapped.result)


def replay_unhandled(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    adapters: Iterable[Adapter],
    *,
    now: datetime | None = None,
    limit: int = 500,
    shop_erase_limit: int = SHOP_ERASE_PER_PASS,
) -> int:
    """Apply the stored deliveries whose application failed, once their pause has passed, and
    those never attempted (the process died between storing and applying) after a minute. A
    platform that does not retry, like WooCommerce, relies on this. Returns how many were
    applied; rows that failed too often are left, with their error, for an operator."""
    now = now or utcnow()
    by_platform = {adapter.platform: adapter for adapter in adapters}
    with factory() as session:
        rows = session.execute(
            select(InboundEvent.id, InboundEvent.source)
            .where(
                InboundEvent.source.in_(list(by_platform)),
                InboundEvent.handled_at.is_(None),
                InboundEvent.attempts < _REPLAY_MAX_ATTEMPTS,
                or_(
                    InboundEvent.retry_at <= now,
                    and_(
                        InboundEvent.retry_at.is_(None),
                        InboundEvent.received_at <= now - timedelta(minutes=1),
                    ),
                ),
            )
            .order_by(InboundEvent.id)
            .limit(limit)
        ).all()
    applied = 0
    for row_id, source in rows:
        received = handle(
            factory,
            config,
            by_platform[source],
            row_id,
            now=now,
            shop_erase_limit=shop_erase_limit,
        )
        applied += received.status in ("applied", "dead_letter")
    return applied


# --------------------------------------------------------------------------------------------
# Erasing a whole shop
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShopErasure:
    """What one pass of :func:`erase_shop_customers` did."""

    erased: int  # customers erased in this pass
    done: bool  # no customer of the shop is left
    failures: tuple[str, ...] = ()  # what failed on our side (labels, nothing personal)


def _shop_erasure_prefix(platform: str, request_id: str) -> str:
    return f"{platform}:{request_id[:99]}:erase:"


def erase_shop_customers(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    platform: str,
    shop: str,
    request_id: str,
    requested_at: datetime,
    now: datetime,
    *,
    limit: int | None = None,
) -> ShopErasure:
    """Erase the customers that a shop's stored deliveries named, through the ingest path's
    ``customer.erased``, at most ``limit`` of them (``None``: all).

    Who came from the shop is known from the raw rows' keyed pseudonyms (``subject_key``) under
    the shop's prefix: customers are read a page at a time, their pseudonyms computed and
    looked up there, and the matches erased in batches of :data:`ERASE_BATCH`, each its own
    transaction, so memory and lock time stay bounded however large the shop. Each erasure is
    dated ``requested_at`` and keyed by the request and the customer, so a pass that is run
    again, whole or in part, repeats nothing: the customers already erased are gone (their id
    is replaced on erasure) and it continues with the rest. Customers who never came through
    this shop are left alone. It stops at the first batch that failed on our side."""
    if not shop:
        raise ValueError("no shop to erase")  # the adapter refuses such a request first
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    shop_prefix = f"{shop[:100]}/"
    event_prefix = _shop_erasure_prefix(platform, request_id)
    erased = 0
    after = 0
    while True:
        with factory() as session:
            page = session.execute(
                select(Customer.id, Customer.external_id)
                .where(Customer.id > after, Customer.erased_at.is_(None))
                .order_by(Customer.id)
                .limit(_PAGE)
            ).all()
            if not page:
                return ShopErasure(erased, done=True)
            after = page[-1].id
            keys = {subject_key(row.external_id): row.external_id for row in page}
            found = session.scalars(
                select(InboundEvent.subject_key)
                .where(
                    InboundEvent.source == platform,
                    InboundEvent.external_id.startswith(shop_prefix, autoescape=True),
                    InboundEvent.subject_key.in_(list(keys)),
                )
                .distinct()
            ).all()
        targets = sorted(keys[key] for key in found if key is not None)
        for start in range(0, len(targets), ERASE_BATCH):
            batch = targets[start : start + ERASE_BATCH]
            if limit is not None:
                batch = batch[: limit - erased]
            events = [
                {
                    "type": "customer.erased",
                    "event_id": f"{event_prefix}{keyed(customer_id)}",
                    "occurred_at": requested_at.isoformat(),
                    "customer": {"id": customer_id},
                }
                for customer_id in batch
            ]
            results = ingest_batch(factory, events, config, now)
            erased += sum(r.status in ("accepted", "duplicate") for r in results)
            failures = [r.outcome or r.error or r.status for r in results if _not_erased(r)]
            if failures:
                return ShopErasure(erased, done=False, failures=tuple(failures))
            if limit is not None and erased >= limit:
                return ShopErasure(erased, done=False)  # the next pass goes on


def _not_erased(result: IngestResult) -> bool:
    """An erasure that did not happen: failed on our side, refused, or an event id holding
    another event (then the customer is still there; the duplicate of an erasure is fine)."""
    return result.status in ("rejected", "conflict")


def _queue(factory: sessionmaker[Session], row_id: int, now: datetime) -> None:
    """Make a stored delivery due for the replay now (unless a pass holds it already)."""
    with factory() as session, session.begin():
        session.execute(
            update(InboundEvent)
            .where(
                InboundEvent.id == row_id,
                InboundEvent.handled_at.is_(None),
                InboundEvent.retry_at.is_(None),
            )
            .values(retry_at=now)
            .execution_options(synchronize_session=False)
        )


def _erase_shop(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    adapter: Adapter,
    row_id: int,
    delivery: Delivery,
    now: datetime,
    limit: int,
) -> Received:
    """One replay pass of a ``shop/redact``: erase up to ``limit`` of the shop's customers; when
    none is left, delete the shop's dead letters, empty its raw deliveries and finish.

    Safe to interrupt anywhere and to run again: the stored request stays unhandled (with its
    payload) until the very end, each batch of erasures commits on its own and is not repeated,
    and the cleanup is idempotent. A pass holds the request for :data:`SHOP_ERASE_LEASE`, so two
    schedulers do not run it at once, and a pass that died is taken over after that. A pass
    that erased ``limit`` customers leaves the request due at once for the next pass; one that
    failed on our side records the failure, and the replay tries again after its pause."""
    platform, shop = adapter.platform, delivery.shop
    shop_rows = and_(
        InboundEvent.source == platform,
        InboundEvent.external_id.startswith(f"{shop[:100]}/", autoescape=True),
        InboundEvent.id != row_id,
    )
    with factory() as session, session.begin():
        held = session.execute(
            update(InboundEvent)
            .where(
                InboundEvent.id == row_id,
                InboundEvent.handled_at.is_(None),
                or_(InboundEvent.retry_at.is_(None), InboundEvent.retry_at <= now),
            )
            .values(retry_at=now + SHOP_ERASE_LEASE)
            .execution_options(synchronize_session=False)
        )
        if not getattr(held, "rowcount", 0):
            return Received("already", row_id)
        # The shop's deliveries not applied yet are closed first, so that no replay brings
        # their customers back meanwhile; their subject keys stay until the end, to find whom
        # to erase.
        session.execute(
            update(InboundEvent)
            .where(shop_rows, InboundEvent.handled_at.is_(None))
            .values(payload=None, handled_at=now, result="erased", error=None, retry_at=None)
            .execution_options(synchronize_session=False)
        )
    progress = erase_shop_customers(
        factory,
        config,
        platform,
        shop,
        delivery.delivery_id,
        delivery.received_at,
        now,
        limit=limit,
    )
    if progress.failures:
        with factory() as session, session.begin():
            _record_failure(session, row_id, "; ".join(progress.failures), now)
        log.warning(
            "%s %s of shop %s (row %s): %d customer(s) erased, then failed on our side; "
            "the replay goes on with it",
            platform,
            delivery.topic,
            shop,
            row_id,
            progress.erased,
        )
        return Received("failed", row_id, "not applied")
    if not progress.done:
        with factory() as session, session.begin():
            session.execute(
                update(InboundEvent)
                .where(InboundEvent.id == row_id, InboundEvent.handled_at.is_(None))
                .values(retry_at=now)
                .execution_options(synchronize_session=False)
            )
        log.info(
            "%s %s of shop %s (row %s): %d customer(s) erased in this pass, more to come",
            platform,
            delivery.topic,
            shop,
            row_id,
            progress.erased,
        )
        return Received("queued", row_id, f"erased {progress.erased} customer(s) so far")
    with factory() as session, session.begin():
        erased = (
            session.scalar(
                select(func.count()).where(
                    InboundEvent.source == SHOP_SOURCE,
                    InboundEvent.external_id.startswith(
                        _shop_erasure_prefix(platform, delivery.delivery_id), autoescape=True
                    ),
                )
            )
            or 0
        )
        # Dead letters of the shop, whoever they name: the customer of a purchase that could not
        # be mapped was never stored, and is named only there.
        marker = json.dumps({"shop": shop}, ensure_ascii=False)[1:-1]  # "shop": "<domain>"
        session.execute(
            delete(DeadLetter)
            .where(
                DeadLetter.source == platform,
                DeadLetter.payload.contains(marker, autoescape=True),
            )
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(InboundEvent)
            .where(
                shop_rows,
                or_(InboundEvent.payload.is_not(None), InboundEvent.subject_key.is_not(None)),
            )
            .values(payload=None, subject_key=None)
            .execution_options(synchronize_session=False)
        )
        result = f"erased {erased} customer(s)"
        _finish_in(session, row_id, result, now, keep=False)
    log.warning("%s %s: %s of shop %s", platform, delivery.topic, result, shop)
    return Received("applied", row_id, result)
