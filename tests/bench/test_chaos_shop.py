"""The chaos run's shop: what it sends must be what the product's contract accepts, in the
proportions the run promises, and the same for the same seed."""

from __future__ import annotations

from collections import Counter

from bench.chaos_shop import make_plan
from ingest.schema import parse_event
from tests.conftest import NOW

START = NOW.timestamp()


def test_every_planned_event_passes_the_products_validation():
    plan = make_plan(400, seed=3, rate=20.0)
    for planned in plan.events:
        parse_event(planned.event(START), now=NOW)  # raises EventRejected if not


def test_the_same_seed_plans_the_same_run():
    def fingerprint(seed: int) -> list[tuple[float, str, str]]:
        return [(e.at, e.event_id, e.path) for e in make_plan(200, seed=seed, rate=20.0).events]

    assert fingerprint(5) == fingerprint(5)
    assert fingerprint(5) != fingerprint(6)


def test_the_mix_of_events():
    plan = make_plan(3000, seed=1, rate=20.0)
    firsts = [e for e in plan.events if not e.duplicate]
    kinds = Counter(e.kind for e in firsts)
    assert kinds["purchase.completed"] == 3000
    assert 0.08 < len(plan.events) / len(firsts) - 1 < 0.12  # 10% sent twice
    assert 0.04 < (kinds["order.cancelled"] + kinds["order.refunded"]) / 3000 < 0.06
    assert 0.03 < kinds["consent.revoked"] / 3000 < 0.06  # 5% of those with some consent
    assert 0.005 < kinds["customer.erased"] / 3000 < 0.015
    timed = [e for e in firsts if e.trigger]
    assert timed and {e.kind for e in timed} <= {
        "order.cancelled",
        "order.refunded",
        "consent.revoked",
        "customer.erased",
    }
    # Some purchases reach us after their own delivery event.
    purchase_at = {e.order_id: e.at for e in firsts if e.kind == "purchase.completed"}
    delivered_first = [
        e for e in firsts if e.kind == "order.delivered" and e.at < purchase_at[e.order_id]
    ]
    assert len(delivered_first) > 100


def test_a_repeat_is_sent_exactly_as_the_first_copy():
    plan = make_plan(300, seed=2, rate=20.0)
    for repeat in (e for e in plan.events if e.duplicate):
        assert repeat.original is not None
        assert repeat.event(START) == repeat.original.event(START)
    # Moving an event timed to a send moves its repeats with it.
    timed = next(e for e in plan.events if e.trigger and not e.duplicate)
    timed.occurred = 1.5
    for repeat in (e for e in plan.events if e.original is timed):
        assert repeat.event(START)["occurred_at"] == timed.event(START)["occurred_at"]
