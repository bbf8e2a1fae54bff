"""Where personal data can live: every text column of the schema, classified once, here.

- :data:`PERSONAL`: values about one person. ``nps-dispatch customer export`` includes every one
  of them held about the customer, and erasure empties them (NULL); ``customers.external_id``,
  which the row cannot do without, is replaced by a random ``erased:`` value.
- :data:`PSEUDONYMS`: keyed hashes and digests derived from personal data. Not exported (they
  mean nothing outside this database). Erasure empties them on the rows about the person; the
  tombstone it writes is the one pseudonym that stays, by design.
- :data:`NOT_PERSONAL`: every other text column, with the reason it names no one.

``tests/models/test_personal_data.py`` walks ``Base.metadata`` and fails when a string, text or
JSON column is in none of these (or in more than one): a new column is classified here when it
is added, and the export and erasure tests then cover it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["NOT_PERSONAL", "PERSONAL", "PSEUDONYMS", "classified"]

Columns = Mapping[str, Mapping[str, str]]  # table -> column -> why

PERSONAL: Final[Columns] = {
    "customers": {
        "external_id": "the shop's id for the person (replaced by a random erased: value)",
        "email": "their address",
        "phone": "their number",
        "phone_timezone": "the time zone their number gives",
        "first_name": "their name",
        "locale": "their language, from their profile",
        "timezone": "their time zone, from their profile",
    },
    "consent_records": {
        "source": "where they gave or withdrew consent, as the shop wrote it",
        "text_version": "which consent wording they agreed to",
        "evidence_ref": "the shop event or provider message proving it: ties the record to "
        "the shop's and the provider's copies, which name them",
    },
    "surveys": {
        "comment": "free text they wrote",
        "provider_message_id": "the provider's record of that message holds their contact "
        "and the text",
        "timezone": "their time zone, copied from their profile or phone number",
    },
    "answers": {
        "comment": "free text they wrote",
    },
    "messages": {
        "body": "the text we sent them, with their name and answer link (console channel only)",
        "provider_message_id": "the provider's record of that message holds their contact "
        "and the text",
    },
    "inbound_events": {
        "payload": "a provider webhook as received: their number or address, their SMS text",
    },
    "dead_letters": {
        "payload": "a shop event as received, contacts and all",
    },
}

PSEUDONYMS: Final[Columns] = {
    "inbound_events": {
        "subject_key": "keyed pseudonym of the customer id, so erasure finds the rows",
        "fingerprint": "unkeyed SHA-256 of a shop event's content: whoever guesses a whole "
        "event about someone can confirm it",
    },
    "dead_letters": {
        "subject_key": "keyed pseudonym of the customer id, so erasure finds the letters",
    },
    "erased_subjects": {
        "subject_hash": "the tombstone: keyed pseudonym of the erased id, kept to refuse late "
        "events; not reversible without NPS_SECRET_KEY",
    },
}

_STATE = "a state, kind or status from a fixed vocabulary"
_CODE = "a provider, channel or code from a fixed vocabulary"
_MASKED = "fixed phrases and provider error codes; provider text passes channels.masking"

NOT_PERSONAL: Final[Columns] = {
    "customers": {
        "email_status": _STATE,
        "phone_status": _STATE,
        "country": "a coarse segment (one of ~250), kept as a covariate of the anonymous report",
    },
    "consent_records": {
        "channel": _CODE,
        "evidence_kind": _STATE,
    },
    "orders": {
        "external_id": "the shop's order number, kept so that late events about the order (a "
        "refund, a delivery, a copy of the purchase) find it and it is counted once; it names "
        "no one here, only the shop's own order records tie it to a person",
        "cancel_kind": _STATE,
        "currency": _CODE,
        "category": "a product category of the shop's catalogue",
        "categories": "product categories of the shop's catalogue",
        "sales_channel": "the shop's sales channel (web, app, store)",
        "country": "a coarse segment (one of ~250), kept as a covariate of the anonymous report",
    },
    "skipped_purchases": {
        "reason": _STATE,
        "detail": "the skip reason's detail (cancelled or refunded)",
    },
    "surveys": {
        "channel": _CODE,
        "state": _STATE,
        "config_version": "a digest of the operator config",
        "anchor_kind": _STATE,
        "arm": "the name of the operator's delay arm",
        "provider": _CODE,
        "tried_channels": _CODE,
        "final_reason": _MASKED,
    },
    "survey_transitions": {
        "from_state": _STATE,
        "to_state": _STATE,
        "reason": _MASKED,
    },
    "answers": {
        "via": _CODE,
    },
    "messages": {
        "kind": _STATE,
        "channel": _CODE,
        "provider": _CODE,
        "status": _STATE,
        "error": _MASKED,
    },
    "inbound_events": {
        "source": _CODE,
        "external_id": "the sender's own id for the event, kept to recognise a late copy; "
        "erasure unlinks the rows about the person from their surveys",
        "event_type": _STATE,
        "result": "a fixed phrase saying what the event did",
        "error": _MASKED,
    },
    "dead_letters": {
        "source": _CODE,
        "event_id": "the shop's id for the event (letters about an erased person are deleted)",
        "error": "field paths and reasons, or a failure's type: never the values",
        "replay_result": _STATE,
    },
    "detractor_alerts": {
        "target": _CODE,
        "state": _STATE,
        "last_error": "an HTTP status or error kind of a delivery attempt, never a response body",
    },
}


def classified() -> dict[tuple[str, str], str]:
    """Every classified (table, column), with the name of the list that holds it."""
    out: dict[tuple[str, str], str] = {}
    for name, columns in (
        ("PERSONAL", PERSONAL),
        ("PSEUDONYMS", PSEUDONYMS),
        ("NOT_PERSONAL", NOT_PERSONAL),
    ):
        for table, reasons in columns.items():
            for column in reasons:
                out[(table, column)] = (
                    name if (table, column) not in out else f"{out[(table, column)]}+{name}"
                )
    return out
