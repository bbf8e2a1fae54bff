"""Validation rules with no database: plausible dates, and what makes two events the same."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from ingest.schema import EventRejected, fingerprint, parse_event
from tests.conftest import NOW
from tests.factories import order_event, purchase


def rejection(raw: dict) -> str:
    with pytest.raises(EventRejected) as caught:
        parse_event(raw, now=NOW)
    return str(caught.value)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    "occurred_at",
    ["9999-12-31T00:00:00Z", "9999-12-31T23:00:00-05:00", iso(NOW + timedelta(days=1, seconds=1))],
)
def test_a_date_more_than_a_day_after_ingest_is_rejected_with_its_path(occurred_at):
    error = rejection(purchase("D-1", at=occurred_at))
    assert error == (
        "occurred_at: must not be more than 1 day after the time of ingest (2026-11-20T10:00:00Z)"
    )


@pytest.mark.parametrize(
    "occurred_at", ["1999-12-31T23:59:59Z", "2000-01-01T00:30:00+01:00", "0001-01-01T00:00:00Z"]
)
def test_a_date_before_2000_is_rejected_with_its_path(occurred_at):
    error = rejection(order_event("delivered", "D-2", at=occurred_at))
    assert error == "occurred_at: must not be before 2000-01-01T00:00:00Z"


def test_consent_capture_time_is_bounded_too():
    early = purchase("D-3", consent={"email": True, "captured_at": "1970-01-01T00:00:00Z"})
    assert rejection(early) == "consent.captured_at: must not be before 2000-01-01T00:00:00Z"
    late = purchase("D-4", consent={"email": True, "captured_at": "9999-01-01T00:00:00Z"})
    assert rejection(late).startswith("consent.captured_at: must not be more than 1 day after")


def test_the_bounds_themselves_are_accepted():
    for at in ("2000-01-01T00:00:00Z", iso(NOW + timedelta(days=1))):
        assert parse_event(purchase("D-5", at=at), now=NOW).occurred_at.isoformat()


def test_the_bound_follows_the_given_now_not_the_wall_clock():
    event = purchase("D-6", at="2031-05-01T12:00:00Z")
    with pytest.raises(EventRejected):
        parse_event(event, now=NOW)
    later = NOW.replace(year=2031, month=5, day=1)
    assert parse_event(event, now=later).order_id == "D-6"


def digest(raw: dict | str) -> str:
    return fingerprint(parse_event(json.loads(raw) if isinstance(raw, str) else raw, now=NOW))


def test_fingerprint_ignores_key_order_white_space_and_unknown_keys():
    event = purchase("G-1", event_id="evt-g")
    shuffled = dict(reversed(list(event.items())))
    shuffled["customer"] = dict(reversed(list(event["customer"].items())))
    pretty = json.dumps(shuffled, indent=4)
    with_extra = {**event, "shop_internal": {"anything": 1}}
    assert digest(event) == digest(pretty) == digest(with_extra)


def test_fingerprint_sees_one_amount_and_one_instant_in_their_spellings():
    event = purchase("G-2", event_id="evt-g", amount="129.90")
    same = purchase("G-2", event_id="evt-g", amount="129.9", at="2026-11-20T11:00:00+01:00")
    same["consent"] = event["consent"]
    default_left_out = {k: v for k, v in event.items() if k != "test"}  # test: false
    assert event["test"] is False
    assert digest(event) == digest(same) == digest(default_left_out)


def test_fingerprint_changes_with_any_field_that_has_a_meaning():
    base = purchase("G-3", event_id="evt-g")
    others = [
        purchase("G-3", event_id="evt-g", amount="129.91"),
        purchase("G-3", event_id="evt-g", email="other@example.com"),
        purchase("G-3", event_id="evt-g", at="2026-11-20T10:00:01Z"),
        {**order_event("cancelled", "G-3"), "event_id": "evt-g"},
    ]
    digests = {digest(base), *(digest(o) for o in others)}
    assert len(digests) == 1 + len(others)
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in digests)
