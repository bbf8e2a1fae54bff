"""Shopify webhooks through the adapter and the one ingest path, on SQLite and PostgreSQL.

Payloads are the shapes of Shopify's documented examples (``tests/fixtures/shopify``); every
test asserts on the rows left behind.
"""

from __future__ import annotations

import copy
import json
import uuid
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from config import OperatorConfig
from ingest import platforms, shopify
from ingest.platforms import Delivery, Received
from ingest.shopify import privacy as shopify_privacy
from models import (
    Base,
    ConsentRecord,
    Customer,
    DeadLetter,
    ErasedSubject,
    InboundEvent,
    Order,
    SkippedPurchase,
    Survey,
    current_consent,
)
from models.privacy import pseudonymiser
from tests.conftest import NOW, Database
from tests.faults import refused

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "shopify"
SHOP = "jsmith.myshopify.com"
ORDER = "820982911946154508"
CUSTOMER = "115310627314723954"


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


def deliver(
    db: Database,
    config: OperatorConfig,
    topic: str,
    body: Any,
    *,
    webhook_id: str | None = None,
    shop: str = SHOP,
    now: datetime = NOW,
) -> Received:
    delivery = Delivery(
        platform="shopify",
        delivery_id=webhook_id or str(uuid.uuid4()),
        topic=topic,
        shop=shop,
        body=body,
        received_at=now,
    )
    return platforms.receive(db.factory, config, shopify.ADAPTER, delivery, now=now)


def table_counts(db: Database) -> dict[str, int]:
    with db.session() as s:
        return {
            table.name: s.scalar(select(func.count()).select_from(table)) or 0
            for table in Base.metadata.sorted_tables
        }


def one(db: Database, model: Any, *where: Any) -> Any:
    with db.session() as s:
        return s.scalars(select(model).where(*where)).one()


def rows(db: Database, model: Any, *where: Any) -> list[Any]:
    with db.session() as s:
        return list(s.scalars(select(model).where(*where)))


def survey_of(db: Database, order_id: str = ORDER) -> Survey:
    with db.session() as s:
        return s.scalars(select(Survey).join(Order).where(Order.external_id == order_id)).one()


def with_options(config: OperatorConfig, **options: Any) -> OperatorConfig:
    return config.model_copy(update={"shopify": config.shopify.model_copy(update=options)})


# -- orders/paid ------------------------------------------------------------------------------


def test_orders_paid_records_order_customer_consent_and_plans_a_survey(db: Database, config):
    received = deliver(db, config, "orders/paid", fixture("orders_paid"), webhook_id="wh-1")

    assert received.status == "applied"
    assert [r.status for r in received.events] == ["accepted", "accepted"]
    order = one(db, Order, Order.external_id == ORDER)
    assert order.purchased_at == datetime(2026, 11, 19, 14, 58, tzinfo=UTC)
    assert (order.total_amount, order.currency) == (Decimal("404.95"), "USD")
    assert order.categories == ["Acme", "Lounge Co"] and order.category == "Acme"
    assert (order.sales_channel, order.country, order.is_test) == ("web", "US", False)
    assert order.previous_orders == 3  # orders_count 4 counts this order
    customer = one(db, Customer, Customer.external_id == CUSTOMER)
    assert (customer.email, customer.phone) == ("john@example.com", "+16135550123")
    assert (customer.first_name, customer.locale, customer.country) == ("John", "en-CA", "US")
    [consent] = rows(db, ConsentRecord)
    assert (consent.channel, consent.granted) == ("email", True)
    assert consent.captured_at == datetime(2026, 11, 19, 14, 57, tzinfo=UTC)
    assert consent.source == "shopify email_marketing_consent: subscribed, confirmed_opt_in"
    survey = survey_of(db)
    assert (survey.state, survey.channel) == ("waiting_anchor", "email")
    raw = one(db, InboundEvent, InboundEvent.source == "shopify")
    assert raw.external_id == f"{SHOP}/wh-1" and raw.event_type == "orders/paid"
    assert raw.handled_at is not None and raw.result == "2 accepted"
    assert raw.subject_key == pseudonymiser().subject(CUSTOMER)
    assert raw.payload is not None and raw.payload["body"]["id"] == int(ORDER)


def test_a_repeated_webhook_id_changes_nothing(db: Database, config):
    body = fixture("orders_paid")
    deliver(db, config, "orders/paid", body, webhook_id="wh-1")
    before = table_counts(db)

    again = deliver(db, config, "orders/paid", body, webhook_id="wh-1")

    assert again.status == "duplicate"
    assert table_counts(db) == before


def test_the_same_order_under_a_new_webhook_id_is_a_duplicate_event(db: Database, config):
    config = with_options(config, purchase_topics=("orders/create", "orders/paid"))
    created = fixture("orders_paid") | {"financial_status": "authorized"}
    deliver(db, config, "orders/create", created, webhook_id="wh-create")

    paid = deliver(db, config, "orders/paid", fixture("orders_paid"), webhook_id="wh-paid")
    redelivered = deliver(db, config, "orders/paid", fixture("orders_paid"), webhook_id="wh-2")

    assert [r.status for r in paid.events] == ["duplicate", "duplicate"]
    assert [r.status for r in redelivered.events] == ["duplicate", "duplicate"]
    assert len(rows(db, Order)) == 1 and len(rows(db, Survey)) == 1
    assert len(rows(db, ConsentRecord)) == 1


def test_orders_create_is_not_a_purchase_unless_configured(config):
    assert not shopify.handles("orders/create", config.shopify)
    assert shopify.handles("orders/paid", config.shopify)
    assert shopify.handles(
        "orders/create", with_options(config, purchase_topics=("orders/create",)).shopify
    )


@pytest.mark.parametrize("status", ["paid", "partially_paid", "authorized"])
def test_orders_create_with_a_settled_or_held_payment_is_a_purchase(db: Database, config, status):
    config = with_options(config, purchase_topics=("orders/create",))
    body = fixture("orders_paid") | {"financial_status": status}

    received = deliver(db, config, "orders/create", body)

    assert [r.status for r in received.events] == ["accepted", "accepted"]
    assert one(db, Order).purchased_at == datetime(2026, 11, 19, 14, 58, tzinfo=UTC)
    assert survey_of(db).state == "waiting_anchor"


@pytest.mark.parametrize(
    ("status", "result"),
    [
        ("pending", "ignored: payment pending"),
        ("voided", "ignored: payment voided"),
        ("expired", "ignored: payment expired"),
        ("refunded", "ignored: payment refunded"),
        ("partially_refunded", "ignored: payment partially_refunded"),
        (None, "ignored: payment status missing"),
    ],
)
def test_orders_create_without_payment_is_recorded_as_ignored_not_a_purchase(
    db: Database, config, status, result
):
    config = with_options(config, purchase_topics=("orders/create",))
    body = fixture("orders_paid") | {"financial_status": status}

    received = deliver(db, config, "orders/create", body)

    assert (received.status, received.result, received.events) == ("applied", result, ())
    assert rows(db, Order) == [] and rows(db, Customer) == [] and rows(db, ConsentRecord) == []
    assert rows(db, Survey) == [] and rows(db, SkippedPurchase) == []
    raw = one(db, InboundEvent, InboundEvent.source == "shopify")
    assert raw.handled_at is not None and raw.result == result


def test_a_pending_order_counts_once_it_is_paid(db: Database, config):
    config = with_options(config, purchase_topics=("orders/create", "orders/paid"))
    pending = fixture("orders_paid") | {"financial_status": "pending"}
    deliver(db, config, "orders/create", pending)

    paid = deliver(db, config, "orders/paid", fixture("orders_paid"))

    assert [r.status for r in paid.events] == ["accepted", "accepted"]
    assert len(rows(db, Order)) == 1 and survey_of(db).state == "waiting_anchor"


def test_a_first_order_has_no_previous_orders_never_minus_one(db: Database, config):
    body = fixture("orders_paid")
    body["customer"]["orders_count"] = 0  # counted before this order reached the count
    deliver(db, config, "orders/paid", body)

    assert one(db, Order).previous_orders == 0
    assert one(db, Customer).previous_orders == 0


def test_the_category_comes_from_product_type_when_configured(db: Database, config):
    body = fixture("orders_paid")
    for line, kind in zip(body["line_items"], ["Sunglasses", "Furniture"], strict=True):
        line["product_type"] = kind
    deliver(db, with_options(config, category="product_type"), "orders/paid", body)

    assert one(db, Order).categories == ["Sunglasses", "Furniture"]


def test_a_test_order_is_recorded_and_skipped(db: Database, config):
    deliver(db, config, "orders/paid", fixture("orders_paid") | {"test": True})

    assert one(db, Order).is_test is True
    assert one(db, SkippedPurchase).reason == "excluded_test_order"


def test_pending_consent_counts_only_when_configured(db: Database, config):
    body = fixture("orders_paid")
    body["customer"]["email_marketing_consent"]["state"] = "pending"
    deliver(db, config, "orders/paid", body, webhook_id="wh-a")
    assert one(db, ConsentRecord).granted is False
    assert one(db, SkippedPurchase).reason == "no_consent"

    body["id"] = 820982911946154509
    body["customer"]["email_marketing_consent"]["consent_updated_at"] = "2026-11-19T10:00:00-05:00"
    deliver(db, with_options(config, consent_states=("subscribed", "pending")), "orders/paid", body)
    survey = survey_of(db, "820982911946154509")
    assert (survey.state, survey.channel) == ("waiting_anchor", "email")


def test_a_guest_checkout_gets_a_stable_id_without_the_address_in_it(db: Database, config):
    body = fixture("orders_paid")
    body.pop("customer")
    deliver(db, config, "orders/paid", body)
    body["id"] = 820982911946154509
    deliver(db, config, "orders/paid", body)

    [customer] = rows(db, Customer)
    assert customer.external_id.startswith("shopify-guest:")
    assert "jon" not in customer.external_id and customer.email == "jon@example.com"
    assert len(rows(db, Order, Order.customer_id == customer.id)) == 2


# -- fulfilments, cancellations, refunds -----------------------------------------------------


def test_fulfilment_then_delivery_give_the_anchors(db: Database, config):
    deliver(db, config, "orders/paid", fixture("orders_paid"))
    created = deliver(db, config, "fulfillments/create", fixture("fulfillments_create"))
    updated = deliver(db, config, "fulfillments/update", fixture("fulfillments_update_delivered"))

    assert [r.status for r in created.events] == ["accepted"]
    assert [r.status for r in updated.events] == ["duplicate", "accepted"]
    order = one(db, Order)
    assert order.fulfilled_at == datetime(2026, 11, 19, 19, 0, tzinfo=UTC)
    assert order.delivered_at == datetime(2026, 11, 20, 13, 15, tzinfo=UTC)
    survey = survey_of(db)
    assert (survey.state, survey.anchor_kind) == ("scheduled", "delivered")
    assert survey.anchor_at == order.delivered_at
    # A fulfilment names no customer: its raw payload (a delivery address) is not kept.
    fulfilments = rows(db, InboundEvent, InboundEvent.event_type.startswith("fulfillments/"))
    assert [r.payload for r in fulfilments] == [None, None]


def test_a_delivery_before_its_purchase_is_kept_for_it(db: Database, config):
    deliver(db, config, "fulfillments/update", fixture("fulfillments_update_delivered"))
    deliver(db, config, "orders/paid", fixture("orders_paid"))

    survey = survey_of(db)
    assert (survey.state, survey.anchor_kind) == ("scheduled", "delivered")


def test_a_failed_fulfilment_is_no_anchor(db: Database, config):
    deliver(db, config, "orders/paid", fixture("orders_paid"))
    received = deliver(
        db, config, "fulfillments/create", fixture("fulfillments_create") | {"status": "failure"}
    )

    assert received.result == "ignored: fulfillment failure"
    assert one(db, Order).fulfilled_at is None


@pytest.mark.parametrize(
    ("topic", "name", "kind"),
    [
        ("orders/cancelled", "orders_cancelled", "cancelled"),
        ("refunds/create", "refunds_create", "refunded"),
    ],
)
def test_a_cancellation_or_refund_withdraws_the_unsent_survey(
    db: Database, config, topic, name, kind
):
    deliver(db, config, "orders/paid", fixture("orders_paid"))

    received = deliver(db, config, topic, fixture(name))

    assert [r.status for r in received.events] == ["accepted"]
    assert one(db, Order).cancel_kind == kind
    survey = survey_of(db)
    assert (survey.state, survey.final_reason) == ("withdrawn", f"order.{kind}")


# -- customers: consent, erasure, data requests ------------------------------------------------


def test_customers_update_records_consent_as_the_state_after_it(db: Database, config):
    deliver(db, config, "orders/paid", fixture("orders_paid"))

    received = deliver(db, config, "customers/update", fixture("customers_update"))

    assert [r.status for r in received.events] == ["accepted", "accepted"]
    with db.session() as s:
        customer = s.scalars(select(Customer)).one()
        assert current_consent(s, customer.id, "email") is False
        assert current_consent(s, customer.id, "sms") is True
        revoked = s.scalars(select(ConsentRecord).where(ConsentRecord.granted.is_(False))).one()
    assert revoked.channel == "email"
    assert revoked.captured_at == datetime(2026, 11, 19, 21, 0, tzinfo=UTC)
    # The unsent email survey does not go out by email any more: SMS is consented now.
    survey = survey_of(db)
    assert (survey.state, survey.channel) == ("waiting_anchor", "sms")


def test_the_same_consent_seen_again_is_recorded_once(db: Database, config):
    deliver(db, config, "customers/update", fixture("customers_update"))
    changed_name = fixture("customers_update") | {"first_name": "Johnny"}
    again = deliver(db, config, "customers/update", changed_name)

    assert [r.status for r in again.events] == ["duplicate", "duplicate"]
    assert len(rows(db, ConsentRecord)) == 2


def test_an_event_id_never_holds_the_customer_id(db: Database, config):
    deliver(db, config, "orders/paid", fixture("orders_paid"))
    deliver(db, config, "customers/update", fixture("customers_update"))
    deliver(db, config, "customers/redact", fixture("customers_redact"))

    ids = [r.external_id for r in rows(db, InboundEvent, InboundEvent.source == "shop")]
    assert ids and not [i for i in ids if CUSTOMER in i]


def test_customers_redact_erases_the_customer(db: Database, config):
    deliver(db, config, "orders/paid", fixture("orders_paid"))

    received = deliver(db, config, "customers/redact", fixture("customers_redact"))

    # The customer, and the guest records their address and number would be kept under.
    assert [(r.status, r.outcome) for r in received.events] == [
        ("accepted", "erased"),
        ("accepted", "nothing stored"),
        ("accepted", "nothing stored"),
    ]
    customer = one(db, Customer)
    assert customer.erased_at is not None and customer.external_id.startswith("erased:")
    assert (customer.email, customer.phone, customer.first_name) == (None, None, None)
    assert survey_of(db).state == "withdrawn"
    tombstones = {t.subject_hash for t in rows(db, ErasedSubject)}
    assert pseudonymiser().subject(CUSTOMER) in tombstones and len(tombstones) == 3
    # No raw payload about them is left: the order's and the request's own.
    shopify_rows = rows(db, InboundEvent, InboundEvent.source == "shopify")
    assert len(shopify_rows) == 2 and all(r.payload is None for r in shopify_rows)
    assert all(r.subject_key is None for r in shopify_rows)


def test_a_late_order_of_an_erased_customer_brings_nothing_back(db: Database, config):
    deliver(db, config, "customers/redact", fixture("customers_redact"))

    deliver(db, config, "orders/paid", fixture("orders_paid"))

    assert rows(db, Customer) == []
    assert one(db, SkippedPurchase).reason == "erased"
    late = one(db, InboundEvent, InboundEvent.event_type == "orders/paid")
    assert (late.payload, late.subject_key) == (None, None)


def test_a_data_request_is_stored_listed_and_logged_without_personal_data(
    db: Database, config, caplog
):
    caplog.set_level("INFO")
    received = deliver(db, config, "customers/data_request", fixture("customers_data_request"))

    assert (received.status, received.result) == ("applied", "data request recorded")
    [request] = shopify_privacy.data_requests(db.factory)
    assert (request.customer_id, request.request_id, request.shop) == (CUSTOMER, "9999", SHOP)
    assert request.orders_requested == (ORDER,)
    [line] = [r.getMessage() for r in caplog.records if "data_request" in r.getMessage()]
    assert "9999" in line and SHOP in line
    assert "john@example.com" not in caplog.text and "6135550123" not in caplog.text
    assert CUSTOMER not in caplog.text


def test_an_erasure_removes_the_pending_data_request(db: Database, config):
    deliver(db, config, "customers/data_request", fixture("customers_data_request"))
    deliver(db, config, "customers/redact", fixture("customers_redact"))

    assert shopify_privacy.data_requests(db.factory) == []


def _order_for(customer_id: int, order_id: int) -> dict[str, Any]:
    body = copy.deepcopy(fixture("orders_paid"))
    body["id"] = order_id
    body["customer"]["id"] = customer_id
    body["customer"]["email"] = f"c{customer_id}@example.com"
    return body


def test_shop_redact_erases_every_customer_of_that_shop_and_no_other(db: Database, config):
    from ingest.service import ingest_event
    from tests.factories import purchase

    deliver(db, config, "orders/paid", _order_for(7700, 1001))
    deliver(db, config, "orders/paid", _order_for(7701, 1002))
    deliver(db, config, "customers/update", fixture("customers_update") | {"id": 7702})
    deliver(db, config, "orders/paid", _order_for(8800, 2001), shop="other.myshopify.com")
    ingest_event(db.factory, purchase("A-1", customer_id="shop-api-1"), config, NOW)

    received = deliver(db, config, "shop/redact", fixture("shop_redact"))

    # Stored and answered at once; the scheduler's replay erases.
    assert (received.status, received.result) == ("queued", "shop erasure queued")
    assert platforms.replay_unhandled(db.factory, config, [shopify.ADAPTER], now=NOW) == 1
    request = one(db, InboundEvent, InboundEvent.id == received.row_id)
    assert request.result == "erased 3 customer(s)" and request.handled_at is not None
    with db.session() as s:
        kept = set(s.scalars(select(Customer.external_id).where(Customer.erased_at.is_(None))))
        erased = s.scalar(select(func.count()).where(Customer.erased_at.is_not(None)))
    assert kept == {"8800", "shop-api-1"} and erased == 3
    again = deliver(db, config, "shop/redact", fixture("shop_redact"))
    platforms.replay_unhandled(db.factory, config, [shopify.ADAPTER], now=NOW)
    assert one(db, InboundEvent, InboundEvent.id == again.row_id).result == "erased 0 customer(s)"


# -- what cannot be mapped, and failures -------------------------------------------------------


def test_an_unmappable_payload_is_one_dead_letter(db: Database, config):
    body = fixture("orders_paid")
    del body["id"]

    received = deliver(db, config, "orders/paid", body, webhook_id="wh-bad")
    again = deliver(db, config, "orders/paid", body, webhook_id="wh-bad")

    assert received.status == "dead_letter" and again.status == "duplicate"
    [letter] = rows(db, DeadLetter)
    assert (
        letter.source == "shopify" and letter.error == "shopify orders/paid not mapped: id: missing"
    )
    assert letter.subject_key == pseudonymiser().subject(CUSTOMER)
    assert json.loads(letter.payload)["body"]["customer"]["id"] == int(CUSTOMER)
    raw = one(db, InboundEvent)
    assert raw.result == f"dead letter {letter.id}" and raw.payload is None
    assert rows(db, Order) == [] and rows(db, Customer) == []


def test_a_body_that_is_not_json_is_a_dead_letter(db: Database, config):
    received = deliver(db, config, "orders/paid", None)

    assert received.status == "dead_letter"
    assert one(db, DeadLetter).error.endswith("the body is not a JSON object")


def test_an_event_the_schema_refuses_is_a_dead_letter_with_the_reason(db: Database, config):
    body = fixture("orders_paid")
    body["processed_at"] = body["created_at"] = "2026-11-25T10:00:00Z"  # days after NOW

    received = deliver(db, config, "orders/paid", body)

    assert received.status == "dead_letter"
    letter = one(db, DeadLetter)
    assert "occurred_at: must not be more than 1 day after the time of ingest" in letter.error
    assert rows(db, Order) == []


def surveys_refused(db: Database, order: str = ORDER) -> AbstractContextManager[None]:
    """A real database error while a purchase of ``order`` is planned (a trigger)."""
    assert order.isdigit()
    when = f"(SELECT external_id FROM orders WHERE id = NEW.order_id) = '{order}'"
    return refused(db, "surveys", when)


def orders_refused(db: Database, order: str) -> AbstractContextManager[None]:
    """A real database error when the row of ``order`` is first written (a trigger), whatever
    the purchase would have planned."""
    assert order.isdigit()
    return refused(db, "orders", f"NEW.external_id = '{order}'", name="test_refuse_order")


def test_a_failure_on_our_side_keeps_the_delivery_for_the_retry(db: Database, config):
    with surveys_refused(db):
        failed = deliver(db, config, "orders/paid", fixture("orders_paid"), webhook_id="wh-1")

    assert failed.status == "failed"
    raw = one(db, InboundEvent, InboundEvent.source == "shopify")
    assert raw.handled_at is None and raw.attempts == 1 and raw.retry_at is not None
    assert raw.payload is not None and rows(db, Order) == []

    retried = deliver(db, config, "orders/paid", fixture("orders_paid"), webhook_id="wh-1")

    assert retried.status == "applied"
    assert [r.status for r in retried.events] == ["duplicate", "accepted"]  # consent had stuck
    assert survey_of(db).state == "waiting_anchor"
    assert one(db, InboundEvent, InboundEvent.source == "shopify").handled_at is not None


def test_the_replay_applies_a_failed_delivery_once_its_pause_has_passed(db: Database, config):
    with surveys_refused(db):
        deliver(db, config, "orders/paid", fixture("orders_paid"))

    assert platforms.replay_unhandled(db.factory, config, [shopify.ADAPTER], now=NOW) == 0
    later = NOW + timedelta(minutes=2)
    assert platforms.replay_unhandled(db.factory, config, [shopify.ADAPTER], now=later) == 1
    assert survey_of(db).state == "waiting_anchor"
    assert platforms.replay_unhandled(db.factory, config, [shopify.ADAPTER], now=later) == 0


def test_shop_redact_without_a_shop_domain_erases_no_one(db: Database, config):
    deliver(db, config, "orders/paid", fixture("orders_paid"), shop="")

    received = deliver(db, config, "shop/redact", fixture("shop_redact"), shop="")

    assert received.status == "dead_letter"
    assert one(db, Customer).erased_at is None


def test_the_consent_topics_of_newer_api_versions_record_consent(db: Database, config):
    # Shapes of the documented samples; newer orders and customers carry no consent.
    email = {
        "customer_id": int(CUSTOMER),
        "email_address": "john@example.com",
        "email_marketing_consent": {
            "state": "subscribed",
            "opt_in_level": "confirmed_opt_in",
            "consent_updated_at": "2026-11-19T09:00:00-05:00",
        },
    }
    sms = {
        "id": int(CUSTOMER),
        "phone": "+16135550123",
        "sms_marketing_consent": {
            "state": "unsubscribed",
            "opt_in_level": "single_opt_in",
            "consent_updated_at": "2026-11-19T09:30:00-05:00",
            "consent_collected_from": "OTHER",
        },
    }
    deliver(db, config, "customers_email_marketing_consent/update", email)
    deliver(db, config, "customers_marketing_consent/update", sms)
    body = fixture("orders_paid")
    for key in ("email_marketing_consent", "sms_marketing_consent", "orders_count"):
        del body["customer"][key]
    deliver(db, config, "orders/paid", body)

    granted = {(r.channel, r.granted) for r in rows(db, ConsentRecord)}
    assert granted == {("email", True), ("sms", False)}
    assert (survey_of(db).state, survey_of(db).channel) == ("waiting_anchor", "email")
    assert one(db, Order).previous_orders is None
