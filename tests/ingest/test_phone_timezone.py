"""The zone a customer's number gives is derived once, when the number is stored, and planning
reads it from ``customers.phone_timezone`` instead of parsing the number again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from ingest.service import ingest_batch, ingest_in_session
from ingest.subjects import export_customer
from models import Customer, Order, Survey
from tests.conftest import Database
from tests.factories import order_event, purchase

Events = list[dict[str, Any]]
Ingest = Callable[[sessionmaker[Session], Events, OperatorConfig, datetime], None]


def as_set(
    factory: sessionmaker[Session],
    raws: list[dict[str, Any]],
    config: OperatorConfig,
    now: datetime,
) -> None:
    results = ingest_batch(factory, raws, config, now)
    assert {r.status for r in results} == {"accepted"}, [r.outcome for r in results]


def one_by_one(
    factory: sessionmaker[Session],
    raws: list[dict[str, Any]],
    config: OperatorConfig,
    now: datetime,
) -> None:
    with factory.begin() as session:
        for raw in raws:
            assert ingest_in_session(session, raw, config, now).status == "accepted"


PATHS = pytest.mark.parametrize("ingest", [as_set, one_by_one], ids=["as_set", "one_by_one"])


def bought(order_id: str, customer_id: str, phone: str | None, now: datetime) -> dict[str, Any]:
    """A purchase whose customer gives no zone of their own and no country: the zone can come
    only from the number (or the operator's default)."""
    event = purchase(
        order_id,
        customer_id,
        at=now - timedelta(hours=1),
        phone=phone,
        country=None,
        consent={"email": True, "sms": True, "source": "checkout", "text_version": "v1"},
    )
    del event["customer"]["timezone"], event["customer"]["country"]
    return event


def stored_zone(db: Database, customer_id: str) -> str | None:
    with db.session() as s:
        return s.scalar(select(Customer.phone_timezone).where(Customer.external_id == customer_id))


def survey_zone(db: Database, order_id: str) -> str | None:
    with db.session() as s:
        return s.scalar(
            select(Survey.timezone).join(Order).where(Order.external_id == order_id).limit(1)
        )


@PATHS
@pytest.mark.parametrize(
    ("phone", "zone"),
    [
        ("+12125551234", "America/New_York"),
        ("+40 721 000 111", "Europe/Bucharest"),
        ("+447400123456", "Europe/London"),  # London, Guernsey, Jersey...: the principal zone
        ("+79123456789", ""),  # a Russian mobile: many zones, the number gives none
        ("0721 000 111", None),  # national, and no country to read it in: not stored
        (None, None),
    ],
)
def test_the_zone_of_the_number_is_stored_beside_it(
    db: Database,
    config: OperatorConfig,
    now: datetime,
    ingest: Ingest,
    phone: str | None,
    zone: str | None,
) -> None:
    ingest(db.factory, [bought("Z-1", "z-c1", phone, now)], config, now)
    assert stored_zone(db, "z-c1") == zone
    expected = zone or config.schedule.default_timezone
    assert survey_zone(db, "Z-1") == expected


@PATHS
def test_a_re_plan_reads_the_stored_zone_and_does_not_parse_the_number(
    db: Database, config: OperatorConfig, now: datetime, ingest: Ingest
) -> None:
    ingest(db.factory, [bought("Z-2", "z-c2", "+40721000111", now)], config, now)
    assert survey_zone(db, "Z-2") == "Europe/Bucharest"
    # A zone the number cannot give: the re-plan can have it only from the column.
    with db.session() as s, s.begin():
        s.execute(update(Customer).values(phone_timezone="Asia/Tokyo"))
    ingest(db.factory, [order_event("delivered", "Z-2", at=now)], config, now)
    assert survey_zone(db, "Z-2") == "Asia/Tokyo"


@PATHS
def test_a_customer_stored_before_the_column_has_their_number_parsed(
    db: Database, config: OperatorConfig, now: datetime, ingest: Ingest
) -> None:
    ingest(db.factory, [bought("Z-3", "z-c3", "+12125551234", now)], config, now)
    with db.session() as s, s.begin():
        s.execute(update(Customer).values(phone_timezone=None))
        s.execute(update(Survey).values(timezone="Europe/Paris"))
    ingest(db.factory, [order_event("delivered", "Z-3", at=now)], config, now)
    assert survey_zone(db, "Z-3") == "America/New_York"
    assert stored_zone(db, "z-c3") is None  # derived again at each plan, not written back


@PATHS
def test_a_new_number_replaces_the_zone_and_an_event_without_one_keeps_it(
    db: Database, config: OperatorConfig, now: datetime, ingest: Ingest
) -> None:
    ingest(db.factory, [bought("Z-4", "z-c4", "+12125551234", now)], config, now)
    ingest(db.factory, [bought("Z-5", "z-c4", None, now)], config, now)
    assert stored_zone(db, "z-c4") == "America/New_York"
    ingest(db.factory, [bought("Z-6", "z-c4", "+40721000111", now)], config, now)
    assert stored_zone(db, "z-c4") == "Europe/Bucharest"
    ingest(db.factory, [bought("Z-7", "z-c4", "not a number", now)], config, now)
    with db.session() as s:
        customer = s.scalars(select(Customer).where(Customer.external_id == "z-c4")).one()
        assert (customer.phone, customer.phone_status, customer.phone_timezone) == (
            None,
            "invalid",
            None,
        )


@pytest.mark.parametrize(
    ("values", "zone"),
    [
        ({"phone": "+40721000111"}, None),  # a new number, the old zone: the zone goes
        ({"phone": None, "phone_status": "missing"}, None),  # erased by such a writer
        ({"phone": "+40721000111", "phone_timezone": "Europe/Bucharest"}, "Europe/Bucharest"),
        ({"phone": "+12125551234"}, "America/New_York"),  # the same number: kept
        ({"first_name": "Ana-Maria"}, "America/New_York"),
    ],
)
def test_a_writer_that_knows_nothing_of_the_zone_cannot_leave_it_stale(
    db: Database, config: OperatorConfig, now: datetime, values: dict[str, Any], zone: str | None
) -> None:
    """The release before the column, still running during a deploy (or after a rollback),
    changes numbers without the zone: the database drops the zone, and the number is parsed."""
    as_set(db.factory, [bought("Z-8", "z-c8", "+12125551234", now)], config, now)
    with db.session() as s, s.begin():
        s.execute(update(Customer).where(Customer.external_id == "z-c8").values(**values))
    assert stored_zone(db, "z-c8") == zone
    as_set(db.factory, [order_event("delivered", "Z-8", at=now)], config, now)
    phone = values.get("phone", "+12125551234")
    expected = {"+40721000111": "Europe/Bucharest", "+12125551234": "America/New_York"}
    assert survey_zone(db, "Z-8") == expected.get(phone, config.schedule.default_timezone)


def test_the_export_names_the_zone_of_the_number(
    db: Database, config: OperatorConfig, now: datetime
) -> None:
    as_set(db.factory, [bought("Z-9", "z-c9", "+14155552671", now)], config, now)
    export = export_customer(db.factory, "z-c9")
    assert export is not None
    assert export["customer"]["phone_timezone"] == "America/Los_Angeles"
