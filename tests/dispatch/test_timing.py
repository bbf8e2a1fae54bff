"""Timing: anchors, delays, arms, jitter, quiet hours and send days in the recipient's zone."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat

from config import WEEKDAYS, Arm, OperatorConfig, QuietHours
from dispatch.timing import (
    anchor_after_timeout,
    choose_arm,
    effective_anchor,
    is_allowed_moment,
    jitter_offset,
    next_allowed_moment,
    plan_due_time,
    resolve_timezone,
    select_delay,
)
from dispatch.zones import NO_PHONE_ZONE, number_zone

BUCHAREST = ZoneInfo("Europe/Bucharest")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
NIGHT = QuietHours(start=time(20), end=time(9))
NONE = QuietHours(start=time(0), end=time(0))
MON_SAT = ("mon", "tue", "wed", "thu", "fri", "sat")
ALL_DAYS = WEEKDAYS


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(
    tz: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, fold: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=tz, fold=fold)


# -- anchors ----------------------------------------------------------------------------------

PURCHASED = utc(2026, 11, 2, 10)
FULFILLED = utc(2026, 11, 3, 15)
DELIVERED = utc(2026, 11, 5, 12)
TIMEOUT = timedelta(days=10)


@pytest.mark.parametrize(
    ("kind", "fulfilled", "delivered", "expected_at", "expected_kind"),
    [
        ("purchase", None, None, PURCHASED, "purchase"),
        ("purchase", FULFILLED, DELIVERED, PURCHASED, "purchase"),
        ("fulfilled", FULFILLED, DELIVERED, FULFILLED, "fulfilled"),
        ("fulfilled", None, DELIVERED, DELIVERED, "delivered"),
        ("delivered", FULFILLED, DELIVERED, DELIVERED, "delivered"),
    ],
)
def test_effective_anchor_known(kind, fulfilled, delivered, expected_at, expected_kind):
    result = effective_anchor(kind, PURCHASED, fulfilled, delivered, TIMEOUT)
    assert result.anchor_at == expected_at
    assert result.kind_used == expected_kind
    assert result.waiting_until is None


@pytest.mark.parametrize("kind", ["fulfilled", "delivered"])
def test_effective_anchor_waits_until_timeout(kind):
    fulfilled = FULFILLED if kind == "delivered" else None  # delivered ignores fulfilment
    result = effective_anchor(kind, PURCHASED, fulfilled, None, TIMEOUT)
    assert result.anchor_at is None
    assert result.kind_used == kind
    assert result.waiting_until == PURCHASED + TIMEOUT
    # Before the deadline, `now` changes nothing; at the deadline, the timeout anchors.
    early = effective_anchor(kind, PURCHASED, fulfilled, None, TIMEOUT, now=PURCHASED)
    assert early == result
    late = effective_anchor(kind, PURCHASED, fulfilled, None, TIMEOUT, now=PURCHASED + TIMEOUT)
    assert late.anchor_at == PURCHASED + TIMEOUT
    assert late.kind_used == "timeout"
    assert late.waiting_until is None
    assert late == anchor_after_timeout(PURCHASED, TIMEOUT)


def test_anchor_event_after_timeout_still_wins():
    delivered = PURCHASED + TIMEOUT + timedelta(days=1)
    result = effective_anchor("delivered", PURCHASED, None, delivered, TIMEOUT, now=delivered)
    assert result.anchor_at == delivered and result.kind_used == "delivered"


def test_effective_anchor_returns_utc():
    purchased = local(BUCHAREST, 2026, 11, 2, 12)
    result = effective_anchor("purchase", purchased, None, None, TIMEOUT)
    assert result.anchor_at == purchased and result.anchor_at.tzinfo is UTC


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        effective_anchor("purchase", datetime(2026, 11, 2), None, None, TIMEOUT)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_allowed_moment(datetime(2026, 11, 2), BERLIN, NIGHT, MON_SAT)


@pytest.mark.parametrize(
    ("kind", "anchor"),
    [("purchase", PURCHASED), ("fulfilled", FULFILLED), ("delivered", DELIVERED)],
)
def test_delay_counts_from_each_anchor(kind, anchor):
    resolution = effective_anchor(kind, PURCHASED, FULFILLED, DELIVERED, TIMEOUT)
    assert resolution.anchor_at is not None
    due = plan_due_time(
        resolution.anchor_at, timedelta(days=3), timedelta(0), "k", BERLIN, NONE, ALL_DAYS
    )
    assert due == anchor + timedelta(days=3)


def test_delay_after_anchor_timeout():
    resolution = effective_anchor(
        "delivered", PURCHASED, None, None, TIMEOUT, now=PURCHASED + TIMEOUT
    )
    assert resolution.anchor_at is not None
    due = plan_due_time(
        resolution.anchor_at, timedelta(days=3), timedelta(0), "k", BERLIN, NONE, ALL_DAYS
    )
    assert due == PURCHASED + TIMEOUT + timedelta(days=3)


# -- delay rules --------------------------------------------------------------------------------


def config_with_rules(*rules: dict[str, object]) -> OperatorConfig:
    return OperatorConfig.model_validate({"schedule": {"delay": "3d", "rules": list(rules)}})


CONFIG = config_with_rules(
    {"match": {"category": "electronics", "country": "DE"}, "delay": "10d"},
    {"match": {"category": ["electronics", "phones"]}, "delay": "7d"},
    {"match": {"channel": "sms"}, "delay": "1d"},
    {"match": {"sales_channel": "store"}, "delay": "2h"},
)


def choose(**kw: str | None):
    attrs: dict[str, str | None] = {
        "category": None,
        "channel": "email",
        "country": None,
        "sales_channel": "web",
    }
    attrs.update(kw)
    return select_delay(CONFIG, **attrs)


def test_first_matching_rule_wins():
    both = choose(category="electronics", country="DE", channel="sms")
    assert (both.delay, both.rule_index) == (timedelta(days=10), 0)


def test_non_matching_rules_are_skipped():
    assert choose(category="electronics", country="FR").rule_index == 1
    assert choose(category="Phones", country="de").rule_index == 1  # case is ignored
    assert choose(category="books", channel="sms").rule_index == 2
    assert choose(category="books", sales_channel="store").delay == timedelta(hours=2)


def test_no_matching_rule_uses_schedule_delay():
    result = choose(category="books")
    assert (result.delay, result.rule_index) == (timedelta(days=3), None)
    # An unknown attribute matches no rule that asks for it.
    assert choose(category=None, country=None).rule_index is None


def test_no_rules():
    result = select_delay(
        OperatorConfig(), category="tv", channel="sms", country="DE", sales_channel="web"
    )
    assert (result.delay, result.rule_index) == (timedelta(days=3), None)


# -- arms ----------------------------------------------------------------------------------------


def test_arms_split_by_weight_and_stay_stable():
    arms = (
        Arm(name="short", delay=timedelta(days=2), weight=1),
        Arm(name="long", delay=timedelta(days=7), weight=3),
    )
    n = 20_000
    chosen = [choose_arm(arms, f"order:A-{i}") for i in range(n)]
    share_long = sum(1 for arm in chosen if arm is not None and arm.name == "long") / n
    # Expected 0.75; the standard error is sqrt(0.75 * 0.25 / n) ~= 0.0031: allow 5 of them.
    assert abs(share_long - 0.75) < 0.0155
    again = [choose_arm(arms, f"order:A-{i}") for i in range(1000)]
    assert again == chosen[:1000]


def test_no_arms():
    assert choose_arm((), "order:A-1") is None


def test_arm_and_jitter_are_independent():
    arms = (Arm(name="a", delay=timedelta(days=2)), Arm(name="b", delay=timedelta(days=7)))
    jitter = timedelta(hours=2)
    late_jitter = [
        choose_arm(arms, f"k{i}").name
        for i in range(4000)
        if jitter_offset(jitter, f"k{i}") >= timedelta(hours=1)
    ]
    share_a = late_jitter.count("a") / len(late_jitter)
    assert abs(share_a - 0.5) < 0.05


# -- jitter ---------------------------------------------------------------------------------------


def test_jitter_in_range_and_deterministic():
    jitter = timedelta(hours=2)
    offsets = [jitter_offset(jitter, f"order:{i}") for i in range(2000)]
    assert all(timedelta(0) <= o < jitter for o in offsets)
    assert offsets == [jitter_offset(jitter, f"order:{i}") for i in range(2000)]
    assert all(o.microseconds == 0 for o in offsets)
    # Spread over the range, not bunched.
    assert min(offsets) < timedelta(minutes=5) and max(offsets) > timedelta(minutes=115)
    assert len(set(offsets)) > 1500


def test_no_jitter():
    assert jitter_offset(timedelta(0), "k") == timedelta(0)


@given(st.integers(min_value=1, max_value=10**6), st.text(max_size=20))
def test_jitter_always_below_bound(seconds, key):
    offset = jitter_offset(timedelta(seconds=seconds), key)
    assert timedelta(0) <= offset < timedelta(seconds=seconds)


# -- time zones ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("explicit", "phone", "country", "expected"),
    [
        ("Europe/Bucharest", "+12125551234", "US", "Europe/Bucharest"),  # explicit first
        (None, "+12125551234", "DE", "America/New_York"),  # phone beats country
        ("Not/AZone", "+12125551234", None, "America/New_York"),  # a bad explicit is ignored
        (None, "+40721000111", None, "Europe/Bucharest"),
        (None, "+442071234567", None, "Europe/London"),
        (None, "+18005551234", "RO", "Europe/Bucharest"),  # toll-free: many zones -> country
        (None, "not a phone", "RO", "Europe/Bucharest"),
        (None, None, "ro", "Europe/Bucharest"),
        (None, None, "DE", "Europe/Berlin"),  # Berlin and Busingen keep the same clock
        (None, None, "US", "Europe/Paris"),  # many zones: the default
        (None, None, "XX", "Europe/Paris"),
        (None, None, None, "Europe/Paris"),
        ("", "", "", "Europe/Paris"),
    ],
)
def test_resolve_timezone(explicit, phone, country, expected):
    assert resolve_timezone(explicit, phone, country, "Europe/Paris").key == expected


def example_numbers() -> list[str]:
    """libphonenumber's example number of every region and kind: about a thousand numbers,
    geographic, mobile, toll-free and the rest."""
    numbers = set()
    for region in phonenumbers.SUPPORTED_REGIONS:
        for kind in vars(phonenumbers.PhoneNumberType).values():
            if isinstance(kind, int):
                example = phonenumbers.example_number_for_type(region, kind)
                if example is not None:
                    numbers.add(phonenumbers.format_number(example, PhoneNumberFormat.E164))
    return sorted(numbers)


def test_the_zone_stored_beside_a_number_resolves_as_the_number_itself():
    numbers = example_numbers()
    assert len(numbers) > 900
    derived = {e164: number_zone(phonenumbers.parse(e164)) for e164 in numbers}
    assert {"America/New_York", "Europe/London", NO_PHONE_ZONE} <= set(derived.values())
    for e164, zone in derived.items():
        for country in (None, "RO"):
            parsed = resolve_timezone(None, e164, country, "Europe/Paris")
            stored = resolve_timezone(None, e164, country, "Europe/Paris", phone_zone=zone)
            assert stored == parsed, e164


@pytest.mark.parametrize(
    ("explicit", "phone", "stored", "expected"),
    [
        (None, "+40721000111", "Asia/Tokyo", "Asia/Tokyo"),  # read, not derived again
        (None, "+40721000111", NO_PHONE_ZONE, "Europe/Paris"),  # derived to none: the default
        (None, "+40721000111", None, "Europe/Bucharest"),  # not derived: the number is parsed
        (None, "+40721000111", "Not/AZone", "Europe/Paris"),  # a zone the tz database lost
        (None, None, "Asia/Tokyo", "Europe/Paris"),  # no number: nothing derived from one counts
        ("Asia/Tokyo", "+12125551234", "America/New_York", "Asia/Tokyo"),  # explicit first
    ],
)
def test_resolve_timezone_with_the_stored_phone_zone(explicit, phone, stored, expected):
    zone = resolve_timezone(explicit, phone, None, "Europe/Paris", phone_zone=stored)
    assert zone.key == expected


# -- quiet hours and send days ------------------------------------------------------------------


def test_allowed_moment_is_kept():
    candidate = local(BUCHAREST, 2026, 11, 20, 14, 30).astimezone(UTC)  # a Friday afternoon
    assert next_allowed_moment(candidate, BUCHAREST, NIGHT, MON_SAT) == candidate


def test_evening_moves_to_next_morning_local():
    candidate = local(BUCHAREST, 2026, 11, 19, 22, 30)  # Thursday 22:30
    result = next_allowed_moment(candidate, BUCHAREST, NIGHT, MON_SAT)
    assert result == local(BUCHAREST, 2026, 11, 20, 9)
    assert result.tzinfo is UTC and result == utc(2026, 11, 20, 7)


def test_early_morning_moves_to_same_morning():
    candidate = local(BUCHAREST, 2026, 11, 19, 6, 15)
    result = next_allowed_moment(candidate, BUCHAREST, NIGHT, MON_SAT)
    assert result == local(BUCHAREST, 2026, 11, 19, 9)


def test_sunday_moves_to_monday_morning():
    candidate = local(BUCHAREST, 2026, 11, 22, 12)  # Sunday noon
    assert next_allowed_moment(candidate, BUCHAREST, NIGHT, MON_SAT) == local(
        BUCHAREST, 2026, 11, 23, 9
    )


def test_saturday_night_skips_sunday():
    candidate = local(BUCHAREST, 2026, 11, 21, 21)  # Saturday 21:00
    assert next_allowed_moment(candidate, BUCHAREST, NIGHT, MON_SAT) == local(
        BUCHAREST, 2026, 11, 23, 9
    )


def test_quiet_hours_judged_in_recipient_zone():
    # 06:30 UTC is 08:30 in Bucharest (quiet) but 01:30 in New York (quiet) and 07:30 in Berlin.
    candidate = utc(2026, 11, 19, 6, 30)
    assert next_allowed_moment(candidate, BUCHAREST, NIGHT, MON_SAT) == utc(2026, 11, 19, 7)
    assert next_allowed_moment(candidate, BERLIN, NIGHT, MON_SAT) == utc(2026, 11, 19, 8)
    assert next_allowed_moment(candidate, NEW_YORK, NIGHT, MON_SAT) == utc(2026, 11, 19, 14)


def test_quiet_hours_not_wrapping_midnight():
    lunch = QuietHours(start=time(12), end=time(14))
    in_lunch = local(BERLIN, 2026, 11, 19, 12, 30)
    assert next_allowed_moment(in_lunch, BERLIN, lunch, MON_SAT) == local(BERLIN, 2026, 11, 19, 14)
    morning = local(BERLIN, 2026, 11, 19, 11).astimezone(UTC)
    assert next_allowed_moment(morning, BERLIN, lunch, MON_SAT) == morning
    late = local(BERLIN, 2026, 11, 19, 23, 30).astimezone(UTC)
    assert next_allowed_moment(late, BERLIN, lunch, MON_SAT) == late
    # A non-send day moves to the first allowed moment of the next send day: its midnight.
    sunday = local(BERLIN, 2026, 11, 22, 10)
    assert next_allowed_moment(sunday, BERLIN, lunch, MON_SAT) == local(BERLIN, 2026, 11, 23, 0)


def test_quiet_hours_ending_at_midnight():
    evening = QuietHours(start=time(22), end=time(0))
    candidate = local(BERLIN, 2026, 11, 19, 23)
    assert next_allowed_moment(candidate, BERLIN, evening, ALL_DAYS) == local(
        BERLIN, 2026, 11, 20, 0
    )


def test_no_quiet_hours_and_all_days():
    candidate = local(BERLIN, 2026, 11, 22, 3, 17).astimezone(UTC)
    assert next_allowed_moment(candidate, BERLIN, NONE, ALL_DAYS) == candidate


def test_no_quiet_hours_non_send_day():
    candidate = local(BERLIN, 2026, 11, 22, 3, 17)  # Sunday
    assert next_allowed_moment(candidate, BERLIN, NONE, MON_SAT) == local(BERLIN, 2026, 11, 23, 0)


def test_single_send_day():
    candidate = local(BERLIN, 2026, 11, 19, 10)  # Thursday
    assert next_allowed_moment(candidate, BERLIN, NIGHT, ("wed",)) == local(BERLIN, 2026, 11, 25, 9)


# -- across DST changes ---------------------------------------------------------------------------


def test_berlin_spring_forward_morning():
    # 2026-03-29 is the last Sunday of March: 02:00 CET -> 03:00 CEST.
    candidate = local(BERLIN, 2026, 3, 29, 0, 30)  # CET, quiet
    result = next_allowed_moment(candidate, BERLIN, NIGHT, ALL_DAYS)
    assert result == local(BERLIN, 2026, 3, 29, 9) == utc(2026, 3, 29, 7)


def test_berlin_spring_forward_nonexistent_end_of_quiet_hours():
    # 02:30 does not exist on 2026-03-29: quiet hours ending then end at the jump (03:00 CEST).
    quiet = QuietHours(start=time(1), end=time(2, 30))
    candidate = local(BERLIN, 2026, 3, 29, 1, 30)
    result = next_allowed_moment(candidate, BERLIN, quiet, ALL_DAYS)
    assert result == utc(2026, 3, 29, 1)
    assert result.astimezone(BERLIN).time() == time(3)


def test_berlin_fall_back():
    # 2026-10-25 is the last Sunday of October: 03:00 CEST -> 02:00 CET.
    candidate = local(BERLIN, 2026, 10, 24, 21)  # Saturday evening, CEST
    result = next_allowed_moment(candidate, BERLIN, NIGHT, MON_SAT)
    assert result == local(BERLIN, 2026, 10, 26, 9) == utc(2026, 10, 26, 8)
    result = next_allowed_moment(candidate, BERLIN, NIGHT, ALL_DAYS)
    assert result == local(BERLIN, 2026, 10, 25, 9) == utc(2026, 10, 25, 8)


def test_berlin_fall_back_repeated_hour():
    # Quiet 02:00-02:30: the repeated hour is quiet twice, from each occurrence of 02:00.
    quiet = QuietHours(start=time(2), end=time(2, 30))
    first = local(BERLIN, 2026, 10, 25, 2, 10, fold=0)  # 00:10 UTC
    assert next_allowed_moment(first, BERLIN, quiet, ALL_DAYS) == utc(2026, 10, 25, 0, 30)
    second = local(BERLIN, 2026, 10, 25, 2, 10, fold=1)  # 01:10 UTC
    assert next_allowed_moment(second, BERLIN, quiet, ALL_DAYS) == utc(2026, 10, 25, 1, 30)


def test_berlin_fall_back_clock_set_back_into_allowed_hours():
    # Quiet 02:30-09:00; at 03:00 CEST the clock goes back to 02:00 CET, which is allowed.
    quiet = QuietHours(start=time(2, 30), end=time(9))
    candidate = utc(2026, 10, 25, 0, 45)  # 02:45 CEST
    assert next_allowed_moment(candidate, BERLIN, quiet, ALL_DAYS) == utc(2026, 10, 25, 1)


def test_new_york_spring_forward():
    # 2026-03-08: 02:00 EST -> 03:00 EDT. Quiet until 02:30, which does not exist that night.
    quiet = QuietHours(start=time(22), end=time(2, 30))
    candidate = utc(2026, 3, 8, 6, 30)  # 01:30 EST
    result = next_allowed_moment(candidate, NEW_YORK, quiet, ALL_DAYS)
    assert result == utc(2026, 3, 8, 7)  # 03:00 EDT
    # The usual 09:00 is 09:00 EDT.
    assert next_allowed_moment(candidate, NEW_YORK, NIGHT, ALL_DAYS) == utc(2026, 3, 8, 13)


def test_new_york_fall_back():
    # 2026-11-01: 02:00 EDT -> 01:00 EST. 09:00 that day is EST.
    candidate = utc(2026, 11, 1, 5)  # 01:00 EDT
    assert next_allowed_moment(candidate, NEW_YORK, NIGHT, ALL_DAYS) == utc(2026, 11, 1, 14)


def test_delay_across_dst_is_elapsed_time():
    anchor = local(BERLIN, 2026, 3, 27, 10)  # Friday 10:00 CET = 09:00 UTC
    due = plan_due_time(anchor, timedelta(days=3), timedelta(0), "k", BERLIN, NIGHT, ("mon", "tue"))
    assert due == utc(2026, 3, 30, 9)  # 72 hours later: Monday 11:00 CEST


# -- plan_due_time ------------------------------------------------------------------------------


def test_plan_due_time_applies_quiet_hours():
    anchor = local(BUCHAREST, 2026, 11, 16, 22, 30)  # Monday 22:30
    due = plan_due_time(anchor, timedelta(days=3), timedelta(0), "k", BUCHAREST, NIGHT, MON_SAT)
    assert due == local(BUCHAREST, 2026, 11, 20, 9)  # Friday 09:00


def test_plan_due_time_jitter_is_deterministic_and_spreads_deferred_surveys():
    anchor = local(BUCHAREST, 2026, 11, 16, 22, 30)
    jitter = timedelta(hours=2)
    dues = [
        plan_due_time(anchor, timedelta(days=3), jitter, f"k{i}", BUCHAREST, NIGHT, MON_SAT)
        for i in range(200)
    ]
    morning = local(BUCHAREST, 2026, 11, 20, 9)
    assert all(morning <= d < morning + jitter for d in dues)
    assert len(set(dues)) > 150
    again = [
        plan_due_time(anchor, timedelta(days=3), jitter, f"k{i}", BUCHAREST, NIGHT, MON_SAT)
        for i in range(200)
    ]
    assert again == dues


def test_plan_due_time_in_allowed_hours_adds_jitter_once():
    anchor = local(BERLIN, 2026, 11, 16, 10)
    jitter = timedelta(hours=2)
    due = plan_due_time(anchor, timedelta(days=1), jitter, "k", BERLIN, NIGHT, MON_SAT)
    assert due == anchor + timedelta(days=1) + jitter_offset(jitter, "k")


# -- properties ---------------------------------------------------------------------------------

ZONES = [
    "Europe/Berlin",
    "Europe/Bucharest",
    "America/New_York",
    "America/Santiago",
    "America/Havana",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Apia",
]


@settings(max_examples=60, deadline=None)
@given(
    minutes=st.integers(min_value=0, max_value=2 * 366 * 24 * 60),
    zone=st.sampled_from(ZONES),
    start=st.integers(min_value=0, max_value=23 * 60 + 59),
    end=st.integers(min_value=0, max_value=23 * 60 + 59),
    days=st.sets(st.sampled_from(WEEKDAYS), min_size=1),
)
def test_next_allowed_moment_is_the_first_allowed_minute(minutes, zone, start, end, days):
    tz = ZoneInfo(zone)
    quiet = QuietHours(start=time(start // 60, start % 60), end=time(end // 60, end % 60))
    candidate = utc(2026, 1, 1) + timedelta(minutes=minutes)
    result = next_allowed_moment(candidate, tz, quiet, days)
    assert result >= candidate
    assert is_allowed_moment(result, tz, quiet, days)
    # Every whole minute before it was not allowed (zone rules change on whole minutes here).
    moment = candidate
    while moment < result:
        assert not is_allowed_moment(moment, tz, quiet, days), moment
        moment += timedelta(minutes=1)


def test_anchor_timeout_is_elapsed_time_across_dst():
    purchased = local(BERLIN, 2026, 3, 25, 10)  # CET; the deadline falls after the change
    result = effective_anchor("delivered", purchased, None, None, TIMEOUT)
    assert result.waiting_until == utc(2026, 3, 25, 9) + TIMEOUT
