"""Contact normalisation: which phones are kept (valid, able to take an SMS), in E.164 with
their zone; which emails, in one spelling."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.contacts import normalise_email, normalise_phone

REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        ("+40721000111", None, ("+40721000111", "valid", "Europe/Bucharest")),
        ("0721 000 111", "ro", ("+40721000111", "valid", "Europe/Bucharest")),
        ("+447400123456", None, ("+447400123456", "valid", "Europe/London")),
        # A Guernsey mobile range: its own zone, which keeps the same clock as London.
        ("+447911123456", None, ("+447911123456", "valid", "Europe/Guernsey")),
        # US numbers are fixed-line-or-mobile: kept, the zone by the area code.
        ("+1 212 555 1234", None, ("+12125551234", "valid", "America/New_York")),
        # A landline cannot take an SMS: refused now, not after a failed send.
        ("+40213101010", None, (None, "invalid", None)),
        ("+442071838750", None, (None, "invalid", None)),
        ("+4072", None, (None, "invalid", None)),
        ("not a number", None, (None, "invalid", None)),
        ("0721 000 111", None, (None, "invalid", None)),  # national, and no country to read it in
        ("   ", None, (None, "missing", None)),
        (None, "RO", (None, "missing", None)),
    ],
)
def test_phones(raw, country, expected):
    phone = normalise_phone(raw, country)
    assert (phone.value, phone.status, phone.zone) == expected


@settings(max_examples=400, deadline=None)
@given(
    region=st.sampled_from(REGIONS),
    digits=st.text(alphabet="0123456789", min_size=4, max_size=13),
    international=st.booleans(),
)
def test_a_phone_is_kept_exactly_when_libphonenumber_finds_it_valid_and_not_a_landline(
    region: str, digits: str, international: bool
):
    """Checked against libphonenumber's own answers to each question, asked separately."""
    raw = f"+{phonenumbers.country_code_for_region(region)}{digits}" if international else digits
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        assert normalise_phone(raw, region).status == "invalid"
        return
    kept = (
        phonenumbers.is_valid_number(number)
        and phonenumbers.number_type(number) != phonenumbers.PhoneNumberType.FIXED_LINE
    )
    phone = normalise_phone(raw, region)
    assert phone.status == ("valid" if kept else "invalid")
    if kept:
        assert phone.value == phonenumbers.format_number(
            number, phonenumbers.PhoneNumberFormat.E164
        )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" Ana.Pop@Example.COM ", ("ana.pop@example.com", "valid")),
        ("ana@bücher.example", ("ana@bücher.example", "valid")),
        ("not-an-address", (None, "invalid")),
        ("ana@", (None, "invalid")),
        ("", (None, "missing")),
        (None, (None, "missing")),
    ],
)
def test_emails(raw, expected):
    email = normalise_email(raw)
    assert (email.value, email.status) == expected
