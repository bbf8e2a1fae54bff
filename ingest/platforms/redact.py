"""Erasing what a platform's privacy request names: the further customers of a
``customers/redact`` (:func:`with_redaction`, looked up when it is applied), and a whole shop
(``shop/redact``): :func:`erase_shop_customers`, run a bounded number of customers a replay
pass by :func:`erase_shop` until none is left, then the shop's dead letters deleted and its raw
deliveries emptied."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from config import OperatorConfig
from ingest.platforms.delivery import Adapter, Delivery, Mapped, Received
from ingest.platforms.fields import keyed
from ingest.platforms.ledger import finish_in, record_failure
from ingest.service import SHOP_SOURCE, IngestResult, ingest_batch
from models import Customer, DeadLetter, InboundEvent, Order
from models.erasure import subject_key

__all__ = [
    "ERASE_BATCH",
    "SHOP_ERASE_LEASE",
    "SHOP_ERASE_PER_PASS",
    "ShopErasure",
    "erase_shop",
    "erase_shop_customers",
    "with_redaction",
]

log = logging.getLogger(__name__)

ERASE_BATCH: Final = 500
SHOP_ERASE_PER_PASS: Final = 2000  # customers a replay pass erases of a shop/redact, at most
# How long a replay pass holds a shop/redact it is carrying out; a pass that died meanwhile is
# taken over by the next one after that.
SHOP_ERASE_LEASE: Final = timedelta(minutes=10)
_PAGE: Final = 5000


def with_redaction(
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


def erase_shop(
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
            record_failure(session, row_id, "; ".join(progress.failures), now)
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
        finish_in(session, row_id, result, now, keep=False)
    log.warning("%s %s: %s of shop %s", platform, delivery.topic, result, shop)
    return Received("applied", row_id, result)
