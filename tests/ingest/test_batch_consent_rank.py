"""The set-based path ranks consent records in Python (``ConsentBook``); the database ranks
them in SQL (``latest_consent``). Over every small history of grants and revocations with
ties, capture times ahead of when they were recorded and records added after loading, both
name the same current consent."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

from sqlalchemy import select

from ingest.batch_plan import ConsentBook
from models import ConsentRecord, Customer
from models.customers import latest_consent
from tests.conftest import Database

# (captured, recorded) offsets in minutes from `now`, and the grant.
_RECORDS = [
    (0, 0, True),
    (0, 0, False),
    (10, 0, True),  # captured ahead of when it was recorded: effective when recorded
    (-5, 0, False),
    (-5, 5, True),
    (5, 5, False),
]


def test_the_book_and_the_query_name_the_same_current_consent(db: Database, now: datetime) -> None:
    histories = [h for n in (1, 2, 3) for h in itertools.permutations(_RECORDS, n)]
    with db.session() as s:
        customers = [Customer(external_id=f"rank-{i}") for i in range(len(histories))]
        s.add_all(customers)
        s.flush()
        for customer, history in zip(customers, histories, strict=True):
            for captured, recorded, granted in history:
                s.add(
                    ConsentRecord(
                        customer_id=customer.id,
                        channel="email",
                        granted=granted,
                        captured_at=now + timedelta(minutes=captured),
                        recorded_at=now + timedelta(minutes=recorded),
                        evidence_kind="event",
                    )
                )
        s.commit()
        book = ConsentBook()
        rows = s.execute(
            select(
                ConsentRecord.customer_id,
                ConsentRecord.channel,
                ConsentRecord.granted,
                ConsentRecord.captured_at,
                ConsentRecord.recorded_at,
                ConsentRecord.id,
            )
        )
        for row in rows:
            book.load(*row)
        differ = [
            history
            for customer, history in zip(customers, histories, strict=True)
            if book.current(customer.id, "email") != bool(latest_consent(s, customer.id, "email"))
        ]
    assert differ == []


def test_a_record_added_during_the_run_ranks_after_every_loaded_one_of_its_moment(
    now: datetime,
) -> None:
    book = ConsentBook()
    book.load(1, "email", True, now, now, 10**9)
    book.add(1, "email", True, now + timedelta(hours=12), now)  # effective at `now`
    assert book.current(1, "email")
    book.add(1, "email", False, now, now)  # the same moment: the revocation wins
    assert not book.current(1, "email")
    book.add(1, "email", True, now, now)  # a grant of the same moment still loses to it
    assert not book.current(1, "email")
