"""The demo's simulated shop as a Shopify store: its events become signed Shopify webhooks that
go through the real app, and every purchase is accounted for."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from demo.shopify import (
    DEMO_SHOPIFY_SECRET,
    post_to_shopify_route,
    shopify_app,
    shopify_customers,
    shopify_webhooks,
)
from demo.simulation import SimulatedShop
from models import Customer, DeadLetter, Order, SkippedPurchase, Survey
from models.session import make_engine, make_session_factory
from tests.conftest import NOW, Database


def counts(db: Database) -> dict[str, int]:
    with db.session() as s:
        return {
            "purchases": s.scalar(
                select(func.count()).select_from(Order).where(Order.purchased_at.is_not(None))
            )
            or 0,
            "surveys": s.scalar(select(func.count()).select_from(Survey)) or 0,
            "skips": s.scalar(select(func.count()).select_from(SkippedPurchase)) or 0,
            "dead_letters": s.scalar(select(func.count()).select_from(DeadLetter)) or 0,
        }


def test_the_simulated_shop_goes_through_the_shopify_route(db: Database, runtime_for, frozen_clock):
    runtime = runtime_for(db, SHOPIFY_WEBHOOK_SECRET=DEMO_SHOPIFY_SECRET)
    shop = SimulatedShop(seed=3, start=NOW - timedelta(hours=1))
    events = shop.events(60)
    purchases = {e["order_id"] for e in events if e["type"] == "purchase.completed"}
    repeated = sum(n - 1 for n in Counter(e["event_id"] for e in events).values())

    with TestClient(shopify_app(runtime)) as client:
        answers = post_to_shopify_route(client, shopify_webhooks(events))

    assert answers["dead_letter"] == 1 and answers["applied"] == len(shopify_webhooks(events)) - 1
    assert answers["event duplicate"] >= repeated > 0  # each repeated order event
    stored = counts(db)
    assert stored["purchases"] == len(purchases) == 60
    assert stored["surveys"] + stored["skips"] == stored["purchases"]
    assert stored["dead_letters"] == 1
    with db.session() as s:
        ids = set(s.scalars(select(Customer.external_id)))
    assert ids <= set(shopify_customers(shop.customers)) and all(i.isdigit() for i in ids)


def test_demo_with_the_shopify_shop_runs_end_to_end(tmp_path: Path):
    db_path = tmp_path / "demo.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NPS_", "TWILIO", "SENDGRID"))}
    script = (
        "from demo.run import run_demo; "
        f"raise SystemExit(run_demo(events=80, shop='shopify', database='sqlite:///{db_path}'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "signed Shopify webhooks" in result.stdout
    assert "Every purchase accounted for" in result.stdout
    engine = make_engine(f"sqlite:///{db_path}")
    stored = counts(Database(engine, make_session_factory(engine)))
    engine.dispose()
    assert stored["purchases"] == 80
    assert stored["surveys"] + stored["skips"] == 80 and stored["dead_letters"] == 1
