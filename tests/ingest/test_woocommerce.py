"""WooCommerce order webhooks through the adapter and the one ingest path, on SQLite and
PostgreSQL. Bodies are the documented ``wc/v3`` order (``tests/fixtures/woocommerce``)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select

from config import OperatorConfig
from ingest import platforms, woocommerce
from ingest.platforms import Delivery, Received
from models import ConsentRecord, Customer, DeadLetter, InboundEvent, Order, SkippedPurchase
from tests.conftest import NOW, Database
from tests.ingest.test_shopify import one, rows, survey_of, table_counts

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "woocommerce"
SITE = "shop.example"


def order(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


def deliver(
    db: Database,
    config: OperatorConfig,
    body: Any,
    *,
    topic: str = "order.updated",
    delivery_id: str | None = None,
) -> Received:
    delivery = Delivery(
        platform="woocommerce",
        delivery_id=delivery_id or uuid.uuid4().hex,
        topic=topic,
        shop=SITE,
        body=body,
        received_at=NOW,
    )
    return platforms.receive(db.factory, config, woocommerce.ADAPTER, delivery, now=NOW)


def with_consent_keys(config: OperatorConfig) -> OperatorConfig:
    options = config.woocommerce.model_copy(
        update={"email_consent_meta_key": "_nps_email_consent", "sms_consent_meta_key": "_sms"}
    )
    return config.model_copy(update={"woocommerce": options})


def test_a_processing_order_is_a_purchase_with_its_checkout_consent(db: Database, config):
    received = deliver(
        db, with_consent_keys(config), order("order_processing"), topic="order.created"
    )

    assert [r.status for r in received.events] == ["accepted"]
    placed = one(db, Order)
    assert placed.external_id == "723"
    assert placed.purchased_at == datetime(2026, 11, 19, 10, 16, 8, tzinfo=UTC)  # date_paid_gmt
    assert (placed.total_amount, placed.currency) == (Decimal("39.00"), "EUR")
    assert (placed.sales_channel, placed.country, placed.fulfilled_at) == ("checkout", "RO", None)
    customer = one(db, Customer)
    assert customer.external_id == "26"
    assert (customer.email, customer.phone) == ("joao.silva@example.com", "+40721000111")
    [consent] = rows(db, ConsentRecord)
    assert (consent.channel, consent.granted) == ("email", True)
    assert consent.source == "woocommerce checkout: _nps_email_consent"
    assert (survey_of(db, "723").state, survey_of(db, "723").channel) == ("waiting_anchor", "email")


def test_without_a_consent_key_the_purchase_is_skipped_no_consent(db: Database, config):
    deliver(db, config, order("order_processing"))

    assert rows(db, ConsentRecord) == []
    assert one(db, SkippedPurchase).reason == "no_consent"


def test_completed_records_the_fulfilment_and_updates_are_duplicates(db: Database, config):
    config = with_consent_keys(config)
    deliver(db, config, order("order_processing"), topic="order.created")

    completed = deliver(db, config, order("order_completed"))
    again = deliver(db, config, order("order_completed"))

    assert [r.status for r in completed.events] == ["duplicate", "accepted"]
    assert [r.status for r in again.events] == ["duplicate", "duplicate"]
    assert one(db, Order).fulfilled_at == datetime(2026, 11, 20, 8, 54, 51, tzinfo=UTC)
    assert len(rows(db, ConsentRecord)) == 1


def test_a_repeated_delivery_id_changes_nothing(db: Database, config):
    deliver(db, config, order("order_processing"), delivery_id="d-1")
    before = table_counts(db)

    again = deliver(db, config, order("order_processing"), delivery_id="d-1")

    assert again.status == "duplicate"
    assert table_counts(db) == before


def test_cancelled_and_refunded_withdraw_the_survey(db: Database, config):
    config = with_consent_keys(config)
    deliver(db, config, order("order_processing"))
    cancelled = deliver(db, config, order("order_cancelled"))
    refunded = deliver(db, config, order("order_refunded"))

    assert [r.status for r in cancelled.events] == ["accepted"]
    assert [r.status for r in refunded.events] == ["accepted"]
    placed = one(db, Order)
    assert placed.cancel_kind == "cancelled"  # the first of the two stands
    assert placed.cancelled_at == datetime(2026, 11, 19, 11, 0, tzinfo=UTC)
    assert survey_of(db, "723").state == "withdrawn"


def test_a_pending_order_is_ignored(db: Database, config):
    received = deliver(db, config, order("order_processing") | {"status": "pending"})

    assert (received.status, received.result) == ("applied", "ignored: status pending")
    assert rows(db, Order) == []
    raw = one(db, InboundEvent, InboundEvent.source == "woocommerce")
    assert raw.handled_at is not None and raw.external_id.startswith(f"{SITE}/")


def test_purchase_statuses_are_the_operators(db: Database, config):
    options = config.woocommerce.model_copy(update={"purchase_statuses": ("on-hold",)})
    config = config.model_copy(update={"woocommerce": options})

    deliver(db, config, order("order_processing") | {"status": "on-hold"})
    processing = deliver(db, config, order("order_processing") | {"id": 724})

    assert one(db, Order).external_id == "723"
    assert processing.result == "ignored: status processing"


def test_a_guest_order_gets_a_stable_id_from_its_billing_address(db: Database, config):
    deliver(db, config, order("order_guest"))
    deliver(db, config, order("order_guest") | {"id": 728})

    [customer] = rows(db, Customer)
    assert customer.external_id.startswith("woocommerce-guest:")
    assert "john" not in customer.external_id and customer.email == "john.doe@example.com"
    assert len(rows(db, Order)) == 2


def test_an_order_without_a_total_is_one_dead_letter(db: Database, config):
    body = order("order_processing")
    del body["total"]

    received = deliver(db, config, body)

    assert received.status == "dead_letter"
    letter = one(db, DeadLetter)
    assert letter.source == "woocommerce"
    assert letter.error == "woocommerce order.updated not mapped: total: missing"
    assert rows(db, Order) == []


def test_the_raw_order_is_kept_only_while_it_is_about_a_customer(db: Database, config):
    deliver(db, config, order("order_processing"))

    with db.session() as s:
        raw = s.scalars(select(InboundEvent).where(InboundEvent.source == "woocommerce")).one()
    assert raw.payload is not None and raw.subject_key is not None
