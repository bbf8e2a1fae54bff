"""One bad item never sinks a batch: implausible dates are refused at validation, and an error
while applying one event rolls back that event only (its savepoint), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sqlalchemy import func, select

from ingest.service import APPLY_FAILED, ingest_batch, ingest_event
from models import ConsentRecord, Customer, InboundEvent, Order, SkippedPurchase, Survey
from tests.conftest import Database
from tests.factories import order_event, purchase
from tests.ingest.faults import TRIGGER_SECRET, surveys_refused_for_fail_orders


def count(db: Database, model, *where) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def assert_nothing_of(db: Database, event: dict) -> None:
    """Not a row of the event anywhere: ledger, customer, consent evidence, order, survey."""
    assert count(db, InboundEvent, InboundEvent.external_id == event["event_id"]) == 0
    assert count(db, Customer, Customer.external_id == event["customer"]["id"]) == 0
    assert count(db, ConsentRecord, ConsentRecord.evidence_ref == event["event_id"]) == 0
    assert count(db, Order, Order.external_id == event["order_id"]) == 0
    with db.session() as s:
        planned = s.scalar(
            select(func.count())
            .select_from(Survey)
            .join(Order)
            .where(Order.external_id == event["order_id"])
        )
    assert planned == 0


def assert_all_of(db: Database, *events: dict) -> None:
    for event in events:
        assert count(db, InboundEvent, InboundEvent.external_id == event["event_id"]) == 1
        assert count(db, Customer, Customer.external_id == event["customer"]["id"]) == 1
        assert count(db, ConsentRecord, ConsentRecord.evidence_ref == event["event_id"]) == 2
        with db.session() as s:
            state = s.scalar(
                select(Survey.state).join(Order).where(Order.external_id == event["order_id"])
            )
        assert state == "waiting_anchor"


def test_an_error_in_the_middle_of_a_batch_rolls_back_that_item_only(db, config, now, caplog):
    first = purchase("OK-1", customer_id="c-first")
    failing = purchase("FAIL-1", customer_id="c-failing")
    last = purchase("OK-2", customer_id="c-last")
    with surveys_refused_for_fail_orders(db), caplog.at_level(logging.INFO):
        results = ingest_batch(db.factory, [first, failing, last], config, now)
    assert [r.status for r in results] == ["accepted", "rejected", "accepted"]
    rejected = results[1]
    assert rejected.event_id == failing["event_id"]
    assert rejected.error == APPLY_FAILED and rejected.retryable
    assert_nothing_of(db, failing)
    assert_all_of(db, first, last)
    # Server side: the event id and the kind of error, never the database's message.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"event {failing['event_id']} (purchase.completed) not applied" in logged
    assert "Error (" in rejected.outcome and " at dispatch/planning.py:" in rejected.outcome
    assert rejected.outcome in logged
    for secret in (TRIGGER_SECRET, "INSERT", "ana@example.com", "+40721000111"):
        assert secret not in logged and secret not in (rejected.error + rejected.outcome)


def test_many_failures_in_one_batch_leave_every_good_event_committed(db, config, now):
    events = [purchase(f"{'FAIL' if i % 2 else 'OK'}-{i}", customer_id=f"c-{i}") for i in range(10)]
    with surveys_refused_for_fail_orders(db):
        results = ingest_batch(db.factory, events, config, now)
    assert [r.status for r in results] == ["accepted", "rejected"] * 5
    assert_all_of(db, *events[0::2])
    for event in events[1::2]:
        assert_nothing_of(db, event)


def test_the_failed_item_can_be_sent_again_once_the_cause_is_gone(db, config, now):
    failing = purchase("FAIL-2", customer_id="c-again")
    with surveys_refused_for_fail_orders(db):
        assert ingest_event(db.factory, failing, config, now).status == "rejected"
    assert ingest_event(db.factory, failing, config, now).status == "accepted"
    assert_all_of(db, failing)


def test_a_purchase_dated_year_9999_is_rejected_and_the_batch_commits(db, config, now):
    good = purchase("Y-1", customer_id="c-good")
    far = purchase("Y-2", customer_id="c-far", at="9999-12-31T00:00:00Z")
    delivered_in_1999 = order_event("delivered", "Y-1", at="1999-06-01T00:00:00Z")
    results = ingest_batch(db.factory, [good, far, delivered_in_1999], config, now)
    assert [(r.status, r.retryable) for r in results] == [
        ("accepted", False),
        ("rejected", False),
        ("rejected", False),
    ]
    assert results[1].error.startswith("occurred_at: must not be more than 1 day after")
    assert results[2].error.startswith("occurred_at: must not be before 2000-01-01")
    assert_all_of(db, good)
    assert_nothing_of(db, far)
    with db.session() as s:
        assert s.scalar(select(Order.delivered_at).where(Order.external_id == "Y-1")) is None
    assert count(db, SkippedPurchase) == 0


def test_the_jsonl_file_path_keeps_the_good_lines(
    db, runtime_for, tmp_path: Path, frozen_clock, capsys
):
    from cli.main import main

    runtime_for(db)
    good = purchase("L-1", customer_id="c-l1")
    failing = purchase("FAIL-L", customer_id="c-l2")
    far = purchase("L-3", customer_id="c-l3", at="9999-01-01T00:00:00Z")
    last = purchase("L-4", customer_id="c-l4")
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in (good, failing, far, last)) + "\n")
    with surveys_refused_for_fail_orders(db):
        code = main(["ingest", str(path)])
    out = capsys.readouterr()
    assert code == 1
    assert "2 accepted, 0 duplicate, 2 rejected" in out.out
    assert "line 2" in out.err and "could not be applied" in out.err
    assert "line 3" in out.err and "occurred_at: must not be more than 1 day" in out.err
    assert TRIGGER_SECRET not in out.err + out.out
    assert_all_of(db, good, last)
    assert_nothing_of(db, failing)
    assert_nothing_of(db, far)
