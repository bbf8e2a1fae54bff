"""Contact normalisation: E.164 phones (phonenumbers) and normalised emails (email-validator).

No network look-ups: an address is judged by its syntax only, never by DNS, so ingest stays fast
and deterministic. Deliverability is learnt later from the provider (bounces).
"""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from dispatch.zones import number_zone
from models.customers import ContactStatus


@dataclass(frozen=True, slots=True)
class NormalisedContact:
    value: str | None
    status: str  # ContactStatus
    # A valid phone's time zone (``dispatch.zones.number_zone``), derived from the number already
    # parsed here and stored beside it; None for an email or a number that is not stored.
    zone: str | None = None


def normalise_phone(raw: str | None, country: str | None) -> NormalisedContact:
    """E.164 when the number is valid; a national number is read in the customer's country."""
    if raw is None or not raw.strip():
        return NormalisedContact(None, ContactStatus.missing)
    try:
        number = phonenumbers.parse(raw, country.upper() if country else None)
    except phonenumbers.NumberParseException:
        return NormalisedContact(None, ContactStatus.invalid)
    # One classification answers both questions: ``number_type`` is UNKNOWN exactly when
    # ``is_valid_number`` is false (both match the number against its region's patterns).
    kind = phonenumbers.number_type(number)
    if kind == phonenumbers.PhoneNumberType.UNKNOWN:
        return NormalisedContact(None, ContactStatus.invalid)
    if kind in (phonenumbers.PhoneNumberType.FIXED_LINE,):
        # A landline cannot receive SMS (Twilio 21614/21635); known now, not after a failed send.
        return NormalisedContact(None, ContactStatus.invalid)
    return NormalisedContact(
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
        ContactStatus.valid,
        number_zone(number),
    )


def normalise_email(raw: str | None) -> NormalisedContact:
    if raw is None or not raw.strip():
        return NormalisedContact(None, ContactStatus.missing)
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError:
        return NormalisedContact(None, ContactStatus.invalid)
    # Lower-case the whole address: the local part is case-sensitive in theory, never in practice,
    # and matching a SendGrid event to a customer needs one spelling.
    return NormalisedContact(result.normalized.lower(), ContactStatus.valid)
