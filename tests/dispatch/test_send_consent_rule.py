"""The send's claim checks consent in SQL (``dispatch.consent.consent_granted``): it must name
the same record as ``models.customers.latest_consent`` for every history, per channel. Both
order by ``models.customers.consent_order``; this checks the outcome on real databases."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import literal, select

from dispatch.consent import consent_granted
from models import Customer
from models.customers import latest_consent, record_consent
from tests.dispatch.test_sending import NOON

MINUTE = timedelta(minutes=1)

#: (channel, granted, captured_at, recorded_at), inserted in this order; expected per channel.
HISTORIES: dict[str, tuple[list[tuple[str, bool, datetime, datetime]], dict[str, bool | None]]] = {
    "no record": ([], {"email": None, "sms": None}),
    "a revocation after a grant": (
        [("email", True, NOON, NOON), ("email", False, NOON + MINUTE, NOON + MINUTE)],
        {"email": False, "sms": None},
    ),
    "a grant after a revocation": (
        [("email", False, NOON, NOON), ("email", True, NOON + MINUTE, NOON + MINUTE)],
        {"email": True, "sms": None},
    ),
    "a revocation and a grant of the same moment, the grant recorded last": (
        [("email", False, NOON, NOON), ("email", True, NOON, NOON)],
        {"email": False, "sms": None},
    ),
    "a grant and a revocation of the same moment, the revocation recorded last": (
        [("email", True, NOON, NOON), ("email", False, NOON, NOON)],
        {"email": False, "sms": None},
    ),
    "a shop grant dated ahead does not outrank a later revocation": (
        [
            ("sms", True, NOON + timedelta(hours=20), NOON),
            ("sms", False, NOON + MINUTE, NOON + MINUTE),
        ],
        {"email": None, "sms": False},
    ),
    "an old grant learnt late does not outrank an earlier-recorded revocation": (
        [
            ("sms", False, NOON + 5 * MINUTE, NOON + 5 * MINUTE),
            ("sms", True, NOON, NOON + 10 * MINUTE),
        ],
        {"email": None, "sms": False},
    ),
    "each channel has its own history": (
        [("email", True, NOON, NOON), ("sms", False, NOON + MINUTE, NOON + MINUTE)],
        {"email": True, "sms": False},
    ),
}


@pytest.mark.parametrize("case", list(HISTORIES), ids=list(HISTORIES))
def test_the_claims_consent_rule_names_the_same_record_as_latest_consent(db, case):
    records, expected = HISTORIES[case]
    with db.session() as s, s.begin():
        customer = Customer(external_id="c-rule", email_status="valid", phone_status="valid")
        s.add(customer)
        s.flush()
        for channel, granted, captured, recorded in records:
            record_consent(
                s,
                customer,
                {channel: granted},
                source="test",
                text_version=None,
                captured_at=captured,
                evidence_kind="event",
                evidence_ref=None,
                recorded_at=recorded,
            )
        for channel, want in expected.items():
            in_sql = s.scalar(select(consent_granted(literal(customer.id), literal(channel))))
            assert (in_sql, latest_consent(s, customer.id, channel)) == (want, want), channel
