"""The chaos run's verdict counts each broken promise, and nothing else: a database and a
provider log where every kind of violation happens exactly once (and a race that is not one)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bench.chaos_checks import verify
from bench.chaos_shop import OrderPlan, PlannedEvent, ShopCustomer, ShopPlan
from bench.fakes.provider import Attempt, Message
from models import (
    Answer,
    ConsentRecord,
    Customer,
    InboundEvent,
    Order,
    SkippedPurchase,
    Survey,
    SurveyTransition,
)
from tests.conftest import NOW

T0 = NOW.timestamp()


def at(seconds: float):
    return NOW + timedelta(seconds=seconds)


def customer(key: str, index: int) -> ShopCustomer:
    return ShopCustomer(key, index, f"{key}@mail.example", None, True, False, "DE", "UTC", "de", 0)


def seed(db) -> dict[str, int]:
    """Six customers with one purchase and survey each; the messages are in ``messages()``."""
    ids: dict[str, int] = {}
    with db.session() as s, s.begin():
        for n in range(1, 7):
            c = Customer(external_id=f"k{n}", email=f"k{n}@mail.example", email_status="valid")
            if n == 4:  # erased at +30 s
                c.external_id, c.email, c.erased_at = "erased:4", None, at(30)
            s.add(c)
            s.flush()
            s.add(
                ConsentRecord(
                    customer_id=c.id,
                    channel="email",
                    granted=True,
                    captured_at=at(-100),
                    recorded_at=at(-100),
                    evidence_kind="event",
                )
            )
            order = Order(external_id=f"o{n}", customer_id=c.id, purchased_at=at(-60))
            s.add(order)
            s.flush()
            state, closes = ("sent", at(1000)) if n == 1 else ("no_response", at(40))
            if n == 5:
                state = "completed"
            survey = Survey(
                order_id=order.id,
                customer_id=c.id,
                channel="email",
                state=state,
                closes_at=closes,
                score=9 if n == 5 else None,
                # A late callback wrote the provider's id back after the erasure.
                provider_message_id="SM-late" if n == 4 else None,
            )
            s.add(survey)
            s.flush()
            ids[f"s{n}"] = survey.id
            claim = {1: 0, 2: 11, 3: 20, 4: 35, 5: 0, 6: 11}[n]
            s.add(
                SurveyTransition(
                    survey_id=survey.id, from_state="queued", to_state="sending", at=at(claim)
                )
            )
        # k2 revoked before its send was claimed; k3 while its send was under way; k6's
        # revocation was written before the claim but committed (seen) only after it.
        for key, recorded, ref in (
            ("k2", 10.0, "ev-revoke-k2"),
            ("k3", 20.5, None),
            ("k6", 8.0, "ev-revoke-k6"),
        ):
            cid = s.query(Customer.id).filter_by(external_id=key).scalar()
            s.add(
                ConsentRecord(
                    customer_id=cid,
                    channel="email",
                    granted=False,
                    captured_at=at(recorded),
                    recorded_at=at(recorded),
                    evidence_kind="event",
                    evidence_ref=ref,
                )
            )
        # An order whose purchase was recorded but got neither a survey nor a skip reason, and
        # one that was skipped (an outcome).
        s.add(Order(external_id="o7", purchased_at=at(-50)))
        skipped = Order(external_id="o8", purchased_at=at(-50))
        s.add(skipped)
        s.flush()
        s.add(SkippedPurchase(order_id=skipped.id, reason="no_consent"))
        # The shop's events as the ledger recorded them; k4's erasure at +30 s.
        for event_id, received in (("ev-erase-k4", 30.0), ("ev-p1", -60.0)):
            s.add(
                InboundEvent(
                    source="shop",
                    external_id=event_id,
                    event_type="x",
                    received_at=at(received),
                )
            )
        s.add(Answer(survey_id=ids["s5"], score=9, via="web", received_at=at(5)))
        s.add(Answer(survey_id=ids["s5"], score=9, via="web", received_at=at(6)))
    return ids


def plan() -> ShopPlan:
    customers = {f"k{n}": customer(f"k{n}", n) for n in range(1, 7)}
    orders = {f"o{n}": OrderPlan(f"o{n}", f"k{n}", purchased_at=0.0) for n in range(1, 7)}
    orders["o9"] = OrderPlan("o9", "k1", purchased_at=0.0)  # its purchase never got in
    orders["o7"] = OrderPlan("o7", "k1", purchased_at=0.0)
    orders["o8"] = OrderPlan("o8", "k1", purchased_at=0.0)
    events = [
        PlannedEvent(0.0, 0.0, {"event_id": e}, "queue", "x", None, "k1")
        for e in ("ev-p1", "ev-erase-k4", "ev-lost")
    ]
    return ShopPlan(
        customers=customers,
        orders=orders,
        events=events,
        erasures={"k4": "ev-erase-k4"},
        erased_at={"k4": 25.0},
        revocations={},
        cancellations={},
    )


def messages(ids: dict[str, int]) -> list[Message]:
    def m(survey: str, received: float) -> Message:
        sid = ids[survey]
        return Message(f"m{sid}-{received}", "sendgrid", "x", "", sid, None, T0 + received, None)

    return [
        m("s1", 0.1),  # the invitation,
        m("s1", 16.0),  # the one reminder,
        m("s1", 17.0),  # and one too many
        m("s2", 11.2),  # consent revoked at +10, the send claimed at +11: a violation
        m("s3", 21.0),  # revoked at +20.5, claimed at +20: in flight, not a violation
        m("s4", 35.1),  # erased at +30, claimed at +35: a violation
        m("s6", 11.2),  # revoked at +8 but seen only at +12, claimed at +11: in flight
        m("s5", 0.2),
        m("s5", 4.0),  # within the limit of two, but too soon to be the reminder
    ]


@pytest.fixture
def verdict(db, config):
    ids = seed(db)
    sent = messages(ids)
    attempts = [
        Attempt(m.provider, m.to, m.survey_id, m.received_at, "created", m.id) for m in sent
    ]
    acts = {ids["s5"]: ["web score 9"]}
    visible = {"ev-revoke-k2": T0 + 10.2, "ev-revoke-k6": T0 + 12.0}
    result = verify(
        db.factory, config, plan(), sent, attempts, acts, at(3600), {"ev-lost"}, visible
    )
    return result, ids


def test_each_violation_is_counted_once(verdict):
    result, _ = verdict
    assert result.violations == {
        "surveys_over_message_limit": 1,
        "surveys_sent_twice": 2,  # s1's last two, s5's two
        "sent_without_consent": 1,
        "sent_after_erasure": 1,
        "erased_data_left": 1,
        "purchases_without_outcome": 2,  # o9 (never recorded) and o7 (no survey, no skip)
        "surveys_not_final": 1,  # s1, still "sent"
        "events_not_recorded": 1,
        "dead_letters": 0,
        "webhooks_not_applied": 0,
        "answers_stored_twice": 1,
        "report_mismatches": 0,
    }
    assert result.failed


def test_races_and_diagnostics_are_figures_not_violations(verdict):
    result, _ = verdict
    figures = result.figures
    assert figures["in_flight_at_revocation"] == 2  # s3 and s6
    assert figures["in_flight_at_erasure"] == 0
    assert figures["messages_over_limit"] == 1
    assert figures["events_not_recorded_still_in_redis"] == 1
    assert figures["not_final_by_state"] == {"sent": 1}
    assert (figures["answers_given"], figures["answer_rows"]) == (1, 2)
    assert figures["send_unknown"] == {"message_created": 0, "nothing_created": 0}
    assert figures["erased_data_left_by_table"] == {"surveys": 1}


def test_examples_name_the_surveys_with_their_history(verdict):
    result, ids = verdict
    [over] = result.examples["surveys_over_message_limit"]
    assert over["survey_id"] == ids["s1"] and over["messages"] == 3
    assert [step[1:3] for step in over["transitions"]] == [["queued", "sending"]]
    assert len(over["provider_log"]) == 3
    [consent] = result.examples["sent_without_consent"]
    assert consent["survey_id"] == ids["s2"]
    [erased] = result.examples["sent_after_erasure"]
    assert erased["survey_id"] == ids["s4"]
    assert {e["order"] for e in result.examples["purchases_without_outcome"]} == {"o9", "o7"}
