"""An event_id reused for a different event is a conflict that changes nothing, never a silent
duplicate; the same event sent again, however it is written, is still a duplicate."""

from __future__ import annotations

import json

from sqlalchemy import insert, select

from ingest.schema import fingerprint, parse_event
from ingest.service import SHOP_SOURCE, ingest_batch, ingest_event
from models import InboundEvent, Order, Survey
from tests.conftest import NOW, Database
from tests.factories import order_event, purchase


def survey_state(db: Database, order_id: str) -> str | None:
    with db.session() as s:
        return s.scalar(select(Survey.state).join(Order).where(Order.external_id == order_id))


def test_the_ledger_keeps_the_fingerprint_of_each_event(db, config, now):
    event = purchase("K-1", event_id="evt-k1")
    ingest_event(db.factory, event, config, now)
    with db.session() as s:
        stored = s.scalar(select(InboundEvent.fingerprint))
    assert stored == fingerprint(parse_event(event, now=now))


def test_a_cancellation_under_a_purchase_event_id_is_a_conflict_and_changes_nothing(
    db, config, now
):
    ingest_event(db.factory, purchase("K-2", event_id="evt-shared"), config, now)
    cancel = order_event("cancelled", "K-2", event_id="evt-shared")
    result = ingest_event(db.factory, cancel, config, now)
    assert result.status == "conflict"
    assert result.error.startswith("event_id: already used by a different event")
    assert "purchase.completed" in result.error
    # The survey still goes out: nothing of the cancellation was applied, not even half.
    assert survey_state(db, "K-2") == "waiting_anchor"
    with db.session() as s:
        order = s.scalar(select(Order).where(Order.external_id == "K-2"))
        assert order.cancelled_at is None
        assert s.scalars(select(InboundEvent.event_type)).all() == ["purchase.completed"]
    # Asked again, it is still a conflict (not taken as the first event's duplicate).
    assert ingest_event(db.factory, cancel, config, now).status == "conflict"


def test_the_same_event_rewritten_is_a_duplicate(db, config, now):
    event = purchase("K-3", event_id="evt-k3", amount="129.90")
    assert ingest_event(db.factory, event, config, now).status == "accepted"
    rewritten = json.loads(json.dumps(dict(reversed(list(event.items()))), indent=2))
    rewritten["total"] = {"currency": "eur", "amount": "129.9"}
    rewritten["occurred_at"] = "2026-11-20T12:00:00+02:00"
    rewritten["added_by_a_newer_shop"] = True
    assert ingest_event(db.factory, rewritten, config, now).status == "duplicate"


def test_other_content_under_one_event_id_inside_one_batch(db, config, now):
    first = purchase("K-4", event_id="evt-k4", amount="10.00")
    changed = purchase("K-4", event_id="evt-k4", amount="99.00")
    results = ingest_batch(db.factory, [first, first, changed], config, now)
    assert [r.status for r in results] == ["accepted", "duplicate", "conflict"]
    with db.session() as s:
        assert str(s.scalar(select(Order.total_amount))) == "10.00"


def test_rows_recorded_before_fingerprints_are_taken_as_duplicates(db, config, now):
    with db.session() as s, s.begin():
        s.execute(
            insert(InboundEvent).values(
                source=SHOP_SOURCE,
                external_id="evt-old",
                event_type="purchase.completed",
                received_at=NOW,
                fingerprint=None,
            )
        )
    result = ingest_event(
        db.factory, order_event("cancelled", "K-5", event_id="evt-old"), config, now
    )
    assert result.status == "duplicate"
    with db.session() as s:
        assert s.scalar(select(Order).where(Order.external_id == "K-5")) is None
