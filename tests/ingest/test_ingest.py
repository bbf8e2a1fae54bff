"""Ingest through the service, on SQLite and PostgreSQL, asserting on stored state."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from ingest.outcome import ConsentRecorded, Planned, Skipped
from ingest.schema import FieldError
from ingest.service import ingest_batch, ingest_event, ingest_in_session
from models import (
    ConsentRecord,
    Customer,
    ErasedSubject,
    InboundEvent,
    Order,
    SkippedPurchase,
    Survey,
    SurveyTransition,
)
from tests.conftest import Database
from tests.factories import consent_event, erased, order_event, purchase


def count(db: Database, model) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def snapshot(db: Database) -> dict[str, int]:
    return {
        m.__tablename__: count(db, m)
        for m in (
            Customer,
            ConsentRecord,
            Order,
            Survey,
            SkippedPurchase,
            InboundEvent,
            SurveyTransition,
        )
    }


def survey_of(db: Database, order_id: str) -> Survey | None:
    with db.session() as s:
        return s.scalar(select(Survey).join(Order).where(Order.external_id == order_id))


def test_purchase_with_consent_plans_one_survey(db: Database, config, now):
    result = ingest_event(db.factory, purchase("A-1"), config, now)
    assert result.status == "accepted"
    survey = survey_of(db, "A-1")
    assert survey is not None
    assert survey.channel == "email"
    # Default anchor is "delivered": no delivery yet, so it waits (until the anchor timeout).
    assert survey.state == "waiting_anchor"
    assert result.effect == Planned(
        survey_state="waiting_anchor", channel="email", due_at=survey.due_at
    )
    assert survey.config_version == config.schedule_version
    with db.session() as s:
        customer = s.scalar(select(Customer))
        assert customer.email == "ana@example.com" and customer.phone == "+40721000111"
        consents = s.scalars(select(ConsentRecord).order_by(ConsentRecord.channel)).all()
        assert [(c.channel, c.granted, c.evidence_ref) for c in consents] == [
            ("email", True, result.event_id),
            ("sms", False, result.event_id),
        ]


def test_same_event_twice_has_one_effect(db: Database, config, now):
    event = purchase("A-1", event_id="evt-dup")
    first = ingest_event(db.factory, event, config, now)
    before = snapshot(db)
    second = ingest_event(db.factory, event, config, now)
    assert (first.status, second.status) == ("accepted", "duplicate")
    assert snapshot(db) == before


def test_duplicate_inside_one_batch(db: Database, config, now):
    event = purchase("A-1", event_id="evt-dup")
    results = ingest_batch(db.factory, [event, event], config, now)
    assert [r.status for r in results] == ["accepted", "duplicate"]
    assert count(db, Survey) == 1


def test_delivery_before_purchase(db: Database, config, now):
    delivered = order_event("delivered", "A-7", at="2026-11-20T09:00:00Z")
    assert ingest_event(db.factory, delivered, config, now).status == "accepted"
    assert count(db, Survey) == 0
    ingest_event(db.factory, purchase("A-7", at="2026-11-19T10:00:00Z"), config, now)
    survey = survey_of(db, "A-7")
    assert survey is not None and survey.state == "scheduled"
    assert survey.anchor_kind == "delivered"
    assert survey.anchor_at.isoformat().startswith("2026-11-20T09:00")


def test_delivery_after_purchase_schedules_the_waiting_survey(db: Database, config, now):
    ingest_event(db.factory, purchase("A-8"), config, now)
    assert survey_of(db, "A-8").state == "waiting_anchor"
    ingest_event(db.factory, order_event("delivered", "A-8"), config, now)
    survey = survey_of(db, "A-8")
    assert survey.state == "scheduled" and survey.due_at > survey.anchor_at


def test_cancellation_before_sending_withdraws(db: Database, config, now):
    ingest_event(db.factory, purchase("A-2"), config, now)
    ingest_event(db.factory, order_event("cancelled", "A-2"), config, now)
    survey = survey_of(db, "A-2")
    assert survey.state == "withdrawn"
    assert survey.final_reason == "order.cancelled"


def test_cancellation_before_purchase_event_skips(db: Database, config, now):
    ingest_event(db.factory, order_event("refunded", "A-3"), config, now)
    ingest_event(db.factory, purchase("A-3"), config, now)
    assert survey_of(db, "A-3") is None
    with db.session() as s:
        skip = s.scalar(select(SkippedPurchase))
        assert (skip.reason, skip.detail) == ("cancelled", "refunded")


def test_revocation_after_planning_suppresses(db: Database, config, now):
    ingest_event(db.factory, purchase("A-4"), config, now)
    result = ingest_event(db.factory, consent_event("revoked", "c-1", email=False), config, now)
    survey = survey_of(db, "A-4")
    assert survey.state == "suppressed"
    assert "email consent revoked" in survey.final_reason
    assert result.effect == ConsentRecorded(
        result="revoked", consent={"email": False}, surveys_suppressed=1, surveys_moved=0
    )


def test_revocation_moves_survey_to_other_consented_channel(db: Database, config, now):
    ingest_event(db.factory, purchase("A-5", consent={"email": True, "sms": True}), config, now)
    assert survey_of(db, "A-5").channel == "email"
    result = ingest_event(db.factory, consent_event("revoked", "c-1", email=False), config, now)
    survey = survey_of(db, "A-5")
    assert (survey.state, survey.channel) == ("waiting_anchor", "sms")
    assert result.effect == ConsentRecorded(
        result="revoked", consent={"email": False}, surveys_suppressed=0, surveys_moved=1
    )


def test_older_revocation_arriving_late_does_not_override_newer_grant(db: Database, config, now):
    ingest_event(
        db.factory,
        purchase("A-6", consent={"email": True, "captured_at": "2026-11-20T10:00:00Z"}),
        config,
        now,
    )
    late = consent_event("revoked", "c-1", at="2026-11-01T00:00:00Z", email=False)
    result = ingest_event(db.factory, late, config, now)
    assert survey_of(db, "A-6").state == "waiting_anchor"
    # Recorded as evidence, but the grant captured later stands, and the answer says so.
    assert result.effect == ConsentRecorded(result="revoked", consent={"email": True})


def test_a_consent_value_is_the_state_after_the_event(db: Database, config, now):
    ingest_event(db.factory, purchase("A-9", consent={"email": True, "sms": True}), config, now)
    ingest_event(db.factory, consent_event("revoked", "c-1", sms=False), config, now)
    regrant = consent_event("granted", "c-1", at="2026-11-20T13:00:00Z", sms=True)
    assert ingest_event(db.factory, regrant, config, now).status == "accepted"
    with db.session() as s:
        history = s.execute(
            select(ConsentRecord.channel, ConsentRecord.granted)
            .where(ConsentRecord.channel == "sms")
            .order_by(ConsentRecord.captured_at)
        ).all()
    assert [tuple(row) for row in history] == [("sms", True), ("sms", False), ("sms", True)]


def test_a_consent_value_contradicting_the_event_type_is_rejected(db: Database, config, now):
    ingest_event(db.factory, purchase("A-10"), config, now)
    before = snapshot(db)
    old_meaning = consent_event("revoked", "c-1", email=True, sms=False)
    result = ingest_event(db.factory, old_meaning, config, now)
    assert result.status == "rejected"
    assert result.errors == (
        FieldError(
            "consent_contradicts_type",
            "true contradicts consent.revoked: a channel's value is its consent after the "
            "event, so use false to revoke it (or leave the channel out)",
            "consent.email",
        ),
    )
    assert result.error == f"consent.email: {result.errors[0].message}"
    nothing = ingest_event(db.factory, consent_event("granted", "c-1"), config, now)
    assert [(e.code, e.param) for e in nothing.errors] == [("consent_channel_required", "consent")]
    assert snapshot(db) == before
    assert survey_of(db, "A-10").state == "waiting_anchor"


def test_no_consent_and_invalid_contact_are_recorded_skips(db: Database, config, now):
    results = [
        ingest_event(
            db.factory,
            purchase("B-1", customer_id="c-a", consent={"email": False, "sms": False}),
            config,
            now,
        ),
        ingest_event(
            db.factory,
            purchase("B-2", customer_id="c-b", email="not-an-email", consent={"email": True}),
            config,
            now,
        ),
        ingest_event(
            db.factory,
            purchase("B-3", customer_id="c-c", email=None, phone="12", consent={"sms": True}),
            config,
            now,
        ),
    ]
    assert [r.effect for r in results] == [
        Skipped(reason="no_consent"),
        Skipped(reason="invalid_contact"),
        Skipped(reason="invalid_contact"),
    ]
    with db.session() as s:
        reasons = dict(
            s.execute(
                select(Order.external_id, SkippedPurchase.reason).join(
                    SkippedPurchase, SkippedPurchase.order_id == Order.id
                )
            ).all()
        )
        c = s.scalar(select(Customer).where(Customer.external_id == "c-b"))
        assert (c.email, c.email_status) == (None, "invalid")
    assert reasons == {"B-1": "no_consent", "B-2": "invalid_contact", "B-3": "invalid_contact"}


def test_test_orders_are_excluded(db: Database, config, now):
    ingest_event(db.factory, purchase("T-1", test=True), config, now)
    with db.session() as s:
        assert s.scalar(select(SkippedPurchase.reason)) == "excluded_test_order"


def test_phone_is_stored_in_e164(db: Database, config, now):
    ingest_event(
        db.factory,
        purchase("P-1", phone="0721 000 111", country="RO", consent={"sms": True}),
        config,
        now,
    )
    with db.session() as s:
        assert s.scalar(select(Customer.phone)) == "+40721000111"
    assert survey_of(db, "P-1").channel == "sms"


def test_customer_erased_removes_personal_data_keeps_counts(db: Database, config, now):
    ingest_event(db.factory, purchase("E-1", customer_id="c-9"), config, now)
    ingest_event(
        db.factory, purchase("E-2", customer_id="c-9", at="2026-11-21T10:00:00Z"), config, now
    )
    # Taken in two days later, when it happened (an event dated after its ingest is refused).
    result = ingest_event(db.factory, erased("c-9"), config, now + timedelta(days=2))
    assert result.status == "accepted"
    with db.session() as s:
        customer = s.scalar(select(Customer))
        assert customer.external_id.startswith("erased:")
        assert (customer.email, customer.phone, customer.first_name) == (None, None, None)
        assert s.scalar(select(func.count()).select_from(ErasedSubject)) == 1
        assert all(
            c.source is None and c.evidence_ref is None for c in s.scalars(select(ConsentRecord))
        )
        # The anonymised counts survive: two orders, one survey (withdrawn) and one skip.
        assert s.scalar(select(func.count()).select_from(Order)) == 2
        states = s.scalars(select(Survey.state)).all()
        assert states == ["withdrawn"]
        assert s.scalar(select(SkippedPurchase.reason)) == "frequency_cap"


def test_late_event_about_erased_customer_brings_no_data_back(db: Database, config, now):
    later = now + timedelta(days=2)
    ingest_event(db.factory, erased("c-10", at="2026-11-22T10:00:00Z"), config, later)
    ingest_event(
        db.factory, purchase("E-3", customer_id="c-10", at="2026-11-21T10:00:00Z"), config, later
    )
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Customer)) == 0
        assert s.scalar(select(SkippedPurchase.reason)) == "erased"


def _apply_one_by_one_in_session(db: Database, events: list[Any], config: Any, now: Any) -> None:
    # The per-event path (platform webhooks, and a failed batch's retry event by event), which
    # reads the channels that are on from the environment itself.
    for raw in events:
        with db.session() as s, s.begin():
            assert ingest_in_session(s, raw, config, now).status == "accepted"


@pytest.mark.parametrize("path", ["batch", "event", "in_session"])
def test_channel_without_provider_is_not_planned(db: Database, config, now, monkeypatch, path):
    # Only SendGrid is configured: SMS is off, so an SMS-only customer is skipped, not consoled.
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.test")
    monkeypatch.setenv("SENDGRID_FROM", "surveys@shop.example")
    events = [
        purchase("N-1", consent={"sms": True}),
        purchase("N-2", customer_id="c-2", consent={"sms": True, "email": True}),
    ]
    if path == "batch":
        assert [r.status for r in ingest_batch(db.factory, events, config, now)] == ["accepted"] * 2
    elif path == "event":
        for raw in events:
            assert ingest_event(db.factory, raw, config, now).status == "accepted"
    else:
        _apply_one_by_one_in_session(db, events, config, now)
    with db.session() as s:
        assert s.scalar(select(SkippedPurchase.reason)) == "no_channel"
    assert survey_of(db, "N-2").channel == "email"


def test_the_channels_that_are_on_are_read_again_for_each_batch(
    db: Database, config, now, monkeypatch
):
    # A run reads the environment once; the next run reads it again.
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.test")
    monkeypatch.setenv("SENDGRID_FROM", "surveys@shop.example")
    ingest_batch(db.factory, [purchase("N-1", consent={"sms": True})], config, now)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "0" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "token")
    monkeypatch.setenv("TWILIO_MESSAGING_SERVICE_SID", "MG" + "0" * 32)
    ingest_batch(
        db.factory, [purchase("N-2", customer_id="c-2", consent={"sms": True})], config, now
    )
    with db.session() as s:
        assert s.scalar(select(SkippedPurchase.reason)) == "no_channel"
    assert survey_of(db, "N-2").channel == "sms"
