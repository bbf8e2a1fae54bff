"""Dead letters of the shop platforms' webhooks replay through their platform's adapter, by
`nps-dispatch deadletters replay` as an operator runs it, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from cli.main import main
from ingest.service import store_dead_letter
from models import Customer, DeadLetter, InboundEvent, Order, SkippedPurchase, Survey
from tests.conftest import NOW, Database
from tests.ingest.test_shopify import ORDER, deliver, fixture, one, rows
from tests.ingest.test_woocommerce import deliver as woo_deliver
from tests.ingest.test_woocommerce import order as woo_order

AHEAD = NOW + timedelta(days=3)  # more than the day ahead an event may be dated


def shopify_ahead() -> dict[str, Any]:
    return fixture("orders_paid") | {"processed_at": AHEAD.isoformat()}


def woocommerce_ahead() -> dict[str, Any]:
    return woo_order("order_processing") | {"date_paid_gmt": AHEAD.isoformat()[:19]}


@pytest.fixture
def cli(db: Database, runtime_for, frozen_clock):
    """`nps-dispatch` in this process, over the test database, its clock held at NOW."""
    runtime_for(db)
    return frozen_clock


def letters(db: Database) -> list[DeadLetter]:
    with db.session() as s:
        return list(s.scalars(select(DeadLetter).order_by(DeadLetter.id)))


@pytest.mark.parametrize("platform", ["shopify", "woocommerce"])
def test_a_payload_the_schema_refused_is_replayed_once_its_date_has_come(
    db: Database, config, cli, capsys, platform
):
    if platform == "shopify":
        refused = deliver(db, config, "orders/paid", shopify_ahead())
        order_id = ORDER
    else:
        refused = woo_deliver(db, config, woocommerce_ahead())
        order_id = "723"
    assert refused.status == "dead_letter" and rows(db, Order) == []

    assert main(["deadletters", "replay"]) == 1  # still ahead of the clock
    [letter] = letters(db)
    assert letter.replayed_at is None and letter.replay_result == "rejected"
    assert "occurred_at: must not be more than 1 day after" in letter.error
    capsys.readouterr()

    cli.move_to(AHEAD)
    code = main(["deadletters", "replay"])

    assert code == 0
    assert f"{letter.id}: accepted" in capsys.readouterr().out
    [letter] = letters(db)
    assert letter.replayed_at is not None and letter.replay_result == "accepted"
    placed = one(db, Order, Order.external_id == order_id)
    assert placed.purchased_at == AHEAD.replace(microsecond=0)
    assert one(db, Customer).email is not None
    # The purchase went through the one ingest path: a survey or a recorded reason.
    assert (
        len(rows(db, Survey, Survey.order_id == placed.id))
        + len(rows(db, SkippedPurchase, SkippedPurchase.order_id == placed.id))
        == 1
    )
    assert main(["deadletters", "replay"]) == 0  # nothing left to replay


def test_a_replayed_letter_already_applied_meanwhile_is_a_duplicate(
    db: Database, config, cli, capsys
):
    refused = deliver(db, config, "orders/paid", shopify_ahead())
    cli.move_to(AHEAD)
    # Shopify delivers the same order again, under a new webhook id, once it can be taken.
    deliver(db, config, "orders/paid", shopify_ahead(), now=AHEAD)

    assert main(["deadletters", "replay", str(refused.dead_letter)]) == 0

    [letter] = letters(db)
    assert (letter.replay_result, letter.replayed_at is not None) == ("duplicate", True)
    assert len(rows(db, Order)) == 1


def test_a_payload_that_still_cannot_be_mapped_stays_listed_with_the_reason(
    db: Database, config, cli, capsys
):
    body = fixture("orders_paid")
    del body["total_price"]
    deliver(db, config, "orders/paid", body)

    assert main(["deadletters", "replay"]) == 1

    [letter] = letters(db)
    assert letter.replayed_at is None and letter.replay_result == "rejected"
    assert letter.error == "shopify orders/paid not mapped: total_price: missing"
    assert "not mapped: total_price: missing" in capsys.readouterr().out


def test_a_letter_stored_before_letters_kept_the_delivery_time_replays_too(
    db: Database, config, cli
):
    """The shape dead letters had before: no delivery id or time of their own."""
    letter_id = store_dead_letter(
        db.factory,
        {
            "event_id": "shopify:wh-old",
            "platform": "shopify",
            "topic": "orders/paid",
            "shop": "jsmith.myshopify.com",
            "customer": {"id": "115310627314723954"},
            "body": fixture("orders_paid"),
        },
        "shopify orders/paid not mapped: an older mapping",
        source="shopify",
    )

    assert main(["deadletters", "replay"]) == 0

    with db.session() as s:
        assert s.get(DeadLetter, letter_id).replay_result == "accepted"
    assert one(db, Order).external_id == ORDER
    # Replaying a letter stores no raw delivery: the webhook row was finished long ago.
    assert rows(db, InboundEvent, InboundEvent.source == "shopify") == []
    assert json.loads(letters(db)[0].payload)["event_id"] == "shopify:wh-old"
