"""Shop platform webhooks over HTTP: signed with the platforms' own algorithm (base64
HMAC-SHA256 of the raw body), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from ingest import platforms, shopify
from ingest.shopify import sign as shopify_sign
from ingest.woocommerce import sign as woocommerce_sign
from models import Customer, DeadLetter, InboundEvent, Order, Survey
from tests.conftest import NOW, Database
from tests.ingest.test_shopify import (
    SHOP,
    fixture,
    one,
    rows,
    survey_of,
    surveys_refused,
    table_counts,
)
from tests.ingest.test_woocommerce import order as woo_order
from web.app import create_app


def refusals(source: str) -> float:
    value = REGISTRY.get_sample_value("nps_webhook_verification_failures_total", {"source": source})
    return value or 0.0


SHOPIFY_SECRET = "shpss_test_0123456789abcdef"
WOO_SECRET = "wc-secret-0123456789"


def app_with_shop_routes(runtime: Any) -> FastAPI:
    """The app as `nps-dispatch web` builds it; the shop webhook routes are part of it."""
    return create_app(runtime)


@pytest.fixture
def client(db: Database, runtime_for, frozen_clock) -> TestClient:
    runtime = runtime_for(
        db, SHOPIFY_WEBHOOK_SECRET=SHOPIFY_SECRET, WOOCOMMERCE_WEBHOOK_SECRET=WOO_SECRET
    )
    return TestClient(app_with_shop_routes(runtime))


def shopify_post(
    client: TestClient,
    topic: str,
    body: Any,
    *,
    webhook_id: str | None = None,
    secret: str = SHOPIFY_SECRET,
    signature: str | None = None,
    raw: bytes | None = None,
) -> Any:
    content = raw if raw is not None else json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": (
            shopify_sign(secret, content) if signature is None else signature
        ),
        "X-Shopify-Shop-Domain": SHOP,
        "X-Shopify-API-Version": "2024-10",
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-Triggered-At": "2026-11-20T09:59:59.000000Z",
        "X-Shopify-Event-Id": str(uuid.uuid4()),
    }
    return client.post("/webhooks/shopify", content=content, headers=headers)


def woo_post(
    client: TestClient,
    body: Any,
    *,
    topic: str = "order.updated",
    delivery_id: str | None = None,
    secret: str = WOO_SECRET,
) -> Any:
    content = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "WooCommerce/9.4.2 Hookshot (WordPress/6.7)",
        "X-WC-Webhook-Source": "https://shop.example/",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": topic.split(".", maxsplit=1)[0],
        "X-WC-Webhook-Event": topic.rsplit(".", maxsplit=1)[-1],
        "X-WC-Webhook-Signature": woocommerce_sign(secret, content),
        "X-WC-Webhook-ID": "12",
        "X-WC-Webhook-Delivery-ID": delivery_id or uuid.uuid4().hex,
    }
    return client.post("/webhooks/woocommerce", content=content, headers=headers)


# -- Shopify ------------------------------------------------------------------------------------


def test_a_signed_orders_paid_plans_a_survey(db: Database, client):
    answer = shopify_post(client, "orders/paid", fixture("orders_paid"))

    assert answer.status_code == 200
    assert answer.json()["status"] == "applied"
    assert [e["status"] for e in answer.json()["events"]] == ["accepted", "accepted"]
    assert survey_of(db).channel == "email"


@pytest.mark.parametrize(
    "forge",
    [
        {"secret": "another-secret"},
        {"signature": "not base64 at all"},
        {"signature": ""},
        {"raw": json.dumps(fixture("orders_paid") | {"total_price": "0.01"}).encode()},
    ],
)
def test_a_forged_shopify_webhook_is_401_and_writes_nothing(db: Database, client, forge):
    body = fixture("orders_paid")
    if "raw" in forge:  # signed over the real body, the body sent was changed
        forge = {
            "raw": forge["raw"],
            "signature": shopify_sign(SHOPIFY_SECRET, json.dumps(body).encode()),
        }
    before = table_counts(db)
    refused = refusals("shopify")

    answer = shopify_post(client, "orders/paid", body, **forge)

    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert table_counts(db) == before
    assert refusals("shopify") == refused + 1


def test_the_shopify_route_is_off_without_its_secret(db: Database, runtime_for, frozen_clock):
    client = TestClient(app_with_shop_routes(runtime_for(db)))

    answer = shopify_post(client, "orders/paid", fixture("orders_paid"))

    assert answer.status_code == 404
    assert sum(table_counts(db).values()) == 0


def test_a_repeated_webhook_id_is_answered_and_changes_nothing(db: Database, client):
    shopify_post(client, "orders/paid", fixture("orders_paid"), webhook_id="wh-1")
    before = table_counts(db)

    answer = shopify_post(client, "orders/paid", fixture("orders_paid"), webhook_id="wh-1")

    assert answer.status_code == 200 and answer.json()["status"] == "duplicate"
    assert table_counts(db) == before


def test_an_unknown_topic_is_200_ignored_and_logged_once(db: Database, client, caplog):
    caplog.set_level(logging.INFO, logger="web.shop_webhooks")
    product = {"id": 788032119674292922, "title": "Example T-Shirt"}
    topic = f"products/update-{uuid.uuid4().hex[:8]}"  # a topic this process has not seen

    answers = [shopify_post(client, topic, product) for _ in range(3)]
    not_configured = shopify_post(client, "orders/create", fixture("orders_paid"))

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json()["status"] == "ignored"
    assert not_configured.status_code == 200 and not_configured.json()["status"] == "ignored"
    assert sum(table_counts(db).values()) == 0
    logged = [r.getMessage() for r in caplog.records if topic in r.getMessage()]
    assert len(logged) == 1


def test_an_unmappable_payload_is_a_dead_letter_and_a_200(db: Database, client):
    answer = shopify_post(client, "orders/paid", None, raw=b"<order><id>1</id></order>")

    assert answer.status_code == 200
    assert answer.json()["status"] == "dead_letter"
    letter = one(db, DeadLetter)
    assert answer.json()["dead_letter"] == letter.id
    assert letter.error == "shopify orders/paid not mapped: the body is not a JSON object"


def test_missing_shopify_headers_are_a_400_and_nothing_written(db: Database, client):
    content = json.dumps(fixture("orders_paid")).encode()
    headers = {"X-Shopify-Hmac-Sha256": shopify_sign(SHOPIFY_SECRET, content)}

    answer = client.post("/webhooks/shopify", content=content, headers=headers)

    assert answer.status_code == 400
    assert sum(table_counts(db).values()) == 0


def test_a_failure_is_a_500_so_that_shopify_retries(db: Database, client):
    with surveys_refused(db):
        failed = shopify_post(client, "orders/paid", fixture("orders_paid"), webhook_id="wh-1")
    retried = shopify_post(client, "orders/paid", fixture("orders_paid"), webhook_id="wh-1")

    assert failed.status_code == 500 and failed.json()["status"] == "failed"
    assert retried.status_code == 200 and retried.json()["status"] == "applied"
    assert survey_of(db).state == "waiting_anchor"


def test_the_order_lifecycle_over_http(db: Database, client):
    for topic, name in [
        ("fulfillments/update", "fulfillments_update_delivered"),  # before its purchase
        ("orders/paid", "orders_paid"),
        ("customers/update", "customers_update"),
        ("refunds/create", "refunds_create"),
    ]:
        assert shopify_post(client, topic, fixture(name)).status_code == 200

    placed = one(db, Order)
    assert placed.delivered_at is not None and placed.cancel_kind == "refunded"
    survey = one(db, Survey)
    assert (survey.state, survey.final_reason) == ("withdrawn", "order.refunded")


def test_customers_redact_over_http_erases(db: Database, client):
    shopify_post(client, "orders/paid", fixture("orders_paid"))

    answer = shopify_post(client, "customers/redact", fixture("customers_redact"))

    assert answer.status_code == 200
    assert survey_of(db).state == "withdrawn"
    assert all(r.payload is None for r in rows(db, InboundEvent))


def test_shop_redact_is_answered_at_once_and_carried_out_by_the_scheduler(
    db: Database, client, config
):
    shopify_post(client, "orders/paid", fixture("orders_paid"))

    answer = shopify_post(client, "shop/redact", fixture("shop_redact"))

    assert answer.status_code == 200
    assert answer.json() == {"status": "queued", "result": "shop erasure queued"}
    assert one(db, Customer).erased_at is None
    assert platforms.replay_unhandled(db.factory, config, [shopify.ADAPTER], now=NOW) == 1
    assert one(db, Customer).erased_at is not None
    assert all(r.payload is None for r in rows(db, InboundEvent))


# -- WooCommerce --------------------------------------------------------------------------------


def test_the_woocommerce_ping_is_200_and_writes_nothing(db: Database, client):
    answer = client.post(
        "/webhooks/woocommerce",
        content=b"webhook_id=12",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert answer.status_code == 200
    assert sum(table_counts(db).values()) == 0


def test_a_signed_woocommerce_order_is_a_purchase_then_a_fulfilment(db: Database, client):
    created = woo_post(client, woo_order("order_processing"), topic="order.created")
    completed = woo_post(client, woo_order("order_completed"))

    assert created.status_code == 200 and created.json()["status"] == "applied"
    assert [e["status"] for e in completed.json()["events"]] == ["duplicate", "accepted"]
    placed = one(db, Order)
    assert placed.purchased_at is not None and placed.fulfilled_at is not None


def test_a_forged_woocommerce_webhook_is_403_and_writes_nothing(db: Database, client):
    refused = refusals("woocommerce")
    answer = woo_post(client, woo_order("order_processing"), secret="not-the-secret")
    unsigned = client.post("/webhooks/woocommerce", json=woo_order("order_processing"))

    assert answer.status_code == 403 and unsigned.status_code == 403
    assert sum(table_counts(db).values()) == 0
    assert refusals("woocommerce") == refused + 2


def test_a_repeated_woocommerce_delivery_changes_nothing(db: Database, client):
    woo_post(client, woo_order("order_processing"), delivery_id="d-1")
    before = table_counts(db)

    again = woo_post(client, woo_order("order_processing"), delivery_id="d-1")

    assert again.json()["status"] == "duplicate"
    assert table_counts(db) == before


def test_other_woocommerce_topics_are_ignored(db: Database, client):
    answer = woo_post(client, {"id": 93, "name": "Woo Single #1"}, topic="product.updated")

    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    assert sum(table_counts(db).values()) == 0


def test_the_woocommerce_route_is_off_without_its_secret(db: Database, runtime_for, frozen_clock):
    client = TestClient(app_with_shop_routes(runtime_for(db)))

    assert woo_post(client, woo_order("order_processing")).status_code == 404
    assert sum(table_counts(db).values()) == 0
