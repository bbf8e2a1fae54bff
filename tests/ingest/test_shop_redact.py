"""Shopify's ``shop/redact``, on SQLite and PostgreSQL: stored and answered at once, carried out
by the scheduler's replay a bounded number of customers a pass, safe to interrupt and to run
again, and leaving nothing of the shop's customers: not their rows, not the shop's dead letters,
not its deliveries waiting for a replay."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from config import OperatorConfig
from ingest import platforms, shopify
from ingest.service import ingest_event, store_dead_letter
from models import Customer, DeadLetter, InboundEvent
from tests.conftest import NOW, Database
from tests.factories import purchase
from tests.ingest.test_shop_erasure import erasures_refused, guest_order, mentioned_anywhere
from tests.ingest.test_shopify import (
    CUSTOMER,
    ORDER,
    SHOP,
    deliver,
    fixture,
    one,
    orders_refused,
    rows,
)

ADAPTERS = [shopify.ADAPTER]


def order_of(customer_id: int, order_id: int) -> dict[str, Any]:
    body = fixture("orders_paid") | {"id": order_id, "email": f"c{customer_id}@example.org"}
    body["customer"] |= {"id": customer_id, "email": f"c{customer_id}@example.org", "phone": None}
    return body


def three_customers(db: Database, config: OperatorConfig) -> None:
    for n in range(3):
        assert deliver(db, config, "orders/paid", order_of(7700 + n, 1000 + n)).status == "applied"


def not_erased(db: Database) -> list[str]:
    with db.session() as s:
        return list(
            s.scalars(
                select(Customer.external_id)
                .where(Customer.erased_at.is_(None))
                .order_by(Customer.external_id)
            )
        )


def request_row(db: Database, row_id: int | None) -> InboundEvent:
    assert row_id is not None
    row: InboundEvent = one(db, InboundEvent, InboundEvent.id == row_id)
    return row


def replay(db: Database, config: OperatorConfig, at: Any, **options: Any) -> int:
    return platforms.replay_unhandled(db.factory, config, ADAPTERS, now=at, **options)


def test_the_request_erases_no_one_until_the_replay_does(db: Database, config):
    three_customers(db, config)

    received = deliver(db, config, "shop/redact", fixture("shop_redact"))

    assert (received.status, received.result) == ("queued", "shop erasure queued")
    assert len(not_erased(db)) == 3
    stored = request_row(db, received.row_id)
    assert stored.handled_at is None and stored.retry_at == NOW and stored.payload is not None
    assert replay(db, config, NOW) == 1
    assert not_erased(db) == []
    done = request_row(db, received.row_id)
    assert (done.result, done.payload, done.retry_at) == ("erased 3 customer(s)", None, None)
    # A redelivery of the request changes nothing.
    webhook_id = done.external_id.removeprefix(f"{SHOP}/")
    again = deliver(db, config, "shop/redact", fixture("shop_redact"), webhook_id=webhook_id)
    assert again.status == "duplicate"


def test_a_large_shop_is_erased_over_several_passes(db: Database, config):
    three_customers(db, config)
    received = deliver(db, config, "shop/redact", fixture("shop_redact"))

    assert replay(db, config, NOW, shop_erase_limit=2) == 0
    assert len(not_erased(db)) == 1
    between = request_row(db, received.row_id)
    assert between.handled_at is None and between.payload is not None
    assert between.retry_at == NOW  # due again on the next pass
    later = NOW + timedelta(seconds=5)
    assert replay(db, config, later, shop_erase_limit=2) == 1
    assert not_erased(db) == []
    assert request_row(db, received.row_id).result == "erased 3 customer(s)"


def test_a_pass_that_fails_on_our_side_loses_nothing_and_the_replay_goes_on(db: Database, config):
    three_customers(db, config)
    received = deliver(db, config, "shop/redact", fixture("shop_redact"))
    replay(db, config, NOW, shop_erase_limit=1)
    assert len(not_erased(db)) == 2

    with erasures_refused(db):
        assert replay(db, config, NOW + timedelta(seconds=5), shop_erase_limit=1) == 0

    failed = request_row(db, received.row_id)
    assert failed.handled_at is None and failed.payload is not None and failed.attempts == 1
    assert failed.retry_at is not None and failed.retry_at > NOW + timedelta(seconds=5)
    assert len(not_erased(db)) == 2
    later = NOW + timedelta(minutes=10)
    for step in range(3):
        replay(db, config, later + timedelta(seconds=step), shop_erase_limit=1)
    assert not_erased(db) == []
    assert request_row(db, received.row_id).result == "erased 3 customer(s)"


def test_a_pass_that_died_holding_the_request_is_taken_over_after_its_lease(db: Database, config):
    three_customers(db, config)
    received = deliver(db, config, "shop/redact", fixture("shop_redact"))
    with db.session() as s, s.begin():  # what a pass leaves when its process dies mid-way
        s.execute(
            update(InboundEvent)
            .where(InboundEvent.id == received.row_id)
            .values(retry_at=NOW + platforms.SHOP_ERASE_LEASE)
        )

    assert replay(db, config, NOW + timedelta(minutes=1)) == 0
    assert len(not_erased(db)) == 3
    assert replay(db, config, NOW + platforms.SHOP_ERASE_LEASE) == 1
    assert not_erased(db) == []


def test_the_shops_dead_letters_go_whoever_they_name(db: Database, config):
    never_stored = order_of(7705, 1005)
    del never_stored["total_price"]
    unmappable = deliver(db, config, "orders/paid", never_stored)
    far_ahead = order_of(7706, 1006) | {"processed_at": "2026-11-25T10:00:00Z"}
    refused = deliver(db, config, "orders/paid", far_ahead)
    assert (unmappable.status, refused.status) == ("dead_letter", "dead_letter")
    other_shop = deliver(db, config, "orders/paid", never_stored, shop="other.myshopify.com")
    api_letter = store_dead_letter(db.factory, purchase("Q-1", customer_id="api-1"), "bad")
    assert all(letter.subject_key for letter in rows(db, DeadLetter))

    deliver(db, config, "shop/redact", fixture("shop_redact"))
    replay(db, config, NOW)

    kept = {letter.id for letter in rows(db, DeadLetter)}
    assert kept == {other_shop.dead_letter, api_letter}
    assert mentioned_anywhere(db, "c7705@", "c7706@") == ["dead_letters"]  # the other shop's


def test_the_shops_deliveries_waiting_for_a_replay_are_closed(db: Database, config):
    # A guest checkout with no consent: nothing of it is stored but the delivery.
    with orders_refused(db, ORDER):
        failed = deliver(db, config, "orders/paid", guest_order())
    assert failed.status == "failed" and rows(db, Customer) == []

    deliver(db, config, "shop/redact", fixture("shop_redact"))
    replay(db, config, NOW)  # the failed delivery's pause has not passed yet

    closed = request_row(db, failed.row_id)
    assert (closed.payload, closed.subject_key, closed.result) == (None, None, "erased")
    assert replay(db, config, NOW + timedelta(hours=1)) == 0
    assert rows(db, Customer) == []
    assert mentioned_anywhere(db, "john@example.com") == []


def test_nothing_of_the_shops_customers_is_left(db: Database, config):
    deliver(db, config, "orders/paid", fixture("orders_paid"))
    deliver(db, config, "customers/data_request", fixture("customers_data_request"))
    deliver(db, config, "customers/update", fixture("customers_update"))
    ingest_event(db.factory, purchase("A-1", customer_id="api-1"), config, NOW)

    deliver(db, config, "shop/redact", fixture("shop_redact"))
    replay(db, config, NOW)

    assert not_erased(db) == ["api-1"]
    assert mentioned_anywhere(db, "john@example.com", "6135550123", CUSTOMER) == []
    shop_rows = rows(db, InboundEvent, InboundEvent.external_id.startswith(f"{SHOP}/"))
    assert [(r.payload, r.subject_key) for r in shop_rows] == [(None, None)] * len(shop_rows)
    assert json.dumps([r.result for r in shop_rows])  # each says what became of it
