"""Loading and locking the rows a set-based run touches (``ingest.batch``).

Each kind of row is read with one ``IN`` query, and locked in a stable order (``external_id``
for orders and customers, the key for the subjects' advisory locks) in the order of the
per-event path (ledger, orders, subjects, customers), so two runs touching the same rows wait
for each other instead of deadlocking. Rows are held as plain objects (:class:`Held`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from sqlalchemy import Insert, RowMapping, Select, Table, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from dispatch.planning import NOT_COUNTED_FOR_CAP, channels_on
from ingest.apply import SHOP_SOURCE, ApplyContext
from ingest.batch_plan import ConsentBook
from ingest.schema import OrderEvent, PurchaseCompleted
from models import ConsentRecord, Customer, InboundEvent, Order, Survey, utcnow
from models.bulk import Match, insert_rows, is_any, select_any
from models.customers import ContactStatus
from models.erasure import erased_at_many
from models.lifecycle import PENDING_STATES

__all__ = ["PENDING", "Held", "Run", "RunItem", "insert", "table_of"]

PENDING: Final = sorted(s.value for s in PENDING_STATES)


@dataclass(frozen=True, slots=True)
class RunItem:
    event: PurchaseCompleted | OrderEvent
    digest: str
    subject: str | None


def insert(session: Session, table: Table, ignoring: Sequence[str] = ()) -> Insert:
    """``INSERT`` for the session's backend; with ``ignoring``, ``ON CONFLICT (ignoring) DO
    NOTHING`` (a concurrent insert of the same key waits for that transaction, then inserts
    nothing)."""
    if session.get_bind().dialect.name == "postgresql":
        pg = postgresql_insert(table)
        return pg.on_conflict_do_nothing(index_elements=list(ignoring)) if ignoring else pg
    lite = sqlite_insert(table)
    return lite.on_conflict_do_nothing(index_elements=list(ignoring)) if ignoring else lite


def table_of(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


class Held:
    """A row held in memory for the run: its columns as plain attributes.

    Building ORM instances and setting their instrumented attributes cost more than the rest
    of planning; the planning functions only read and set attributes, so plain objects stand in
    for the model they are cast to (written back by ``ingest.batch``)."""

    def __init__(self, row: Mapping[Any, Any]) -> None:
        self.__dict__.update(row)


class HeldCustomer(Held):
    def contact_for(self, channel: str) -> tuple[str | None, str]:
        return Customer.contact_for(cast(Customer, self), channel)


def _order(row: Mapping[Any, Any]) -> Order:
    return cast(Order, Held(row))


def _customer(row: Mapping[Any, Any]) -> Customer:
    return cast(Customer, HeldCustomer(row))


class Run:
    """The rows one run touches, loaded once, changed in memory, written once."""

    def __init__(self, session: Session, items: list[RunItem], ctx: ApplyContext) -> None:
        self.session = session
        self.items = items
        self.ctx = ctx
        self.orders: dict[str, Order] = {}
        # The purchases' customers by the shop's id: stored ones locked, new ones not stored yet.
        self.customers: dict[str, Customer] = {}
        self.by_id: dict[int, Customer] = {}
        self.surveys: dict[int, Survey] = {}  # of the anchor events' orders, by order id
        self.erased: dict[str, Any] = {}
        self.book = ConsentBook()
        self.created: set[int] = set()  # stand-in ids of the customers the run creates
        self.counted: dict[int, list[Any]] = {}
        self.enabled = channels_on()  # once for the run, not once per purchase
        # The subject keys of the ledger rows found under the event ids the run did not claim.
        self.recorded_subjects: dict[str, str | None] = {}

    # -- loading ------------------------------------------------------------------------------

    def claim(self) -> tuple[list[int], dict[str, tuple[str | None, str | None]]]:
        """Ledger rows for every event; returns the indexes claimed and, for the others, what
        is recorded under their event id."""
        table = table_of(InboundEvent)
        received = utcnow()
        rows = [
            {
                "source": SHOP_SOURCE,
                "external_id": item.event.event_id,
                "event_type": item.event.type,
                "subject_key": item.subject,
                "fingerprint": item.digest,
                "received_at": received,
            }
            for item in sorted(self.items, key=lambda item: item.event.event_id)
        ]
        inserted = insert_rows(
            self.session,
            table,
            rows,
            ignoring=["source", "external_id"],
            returning=[table.c.external_id],
        )
        claimed = set(inserted.scalars().all()) if inserted is not None else set()
        others = sorted({item.event.event_id for item in self.items} - claimed)
        recorded: dict[str, tuple[str | None, str | None]] = {}
        if others:
            for external_id, digest, event_type, subject in self.session.execute(
                select(
                    table.c.external_id,
                    table.c.fingerprint,
                    table.c.event_type,
                    table.c.subject_key,
                ).where(
                    table.c.source == SHOP_SOURCE,
                    is_any(self.session, table.c.external_id, others),
                )
            ).all():
                recorded[external_id] = (digest, event_type)
                self.recorded_subjects[external_id] = subject
        live = [i for i, item in enumerate(self.items) if item.event.event_id in claimed]
        return live, recorded

    def _create_and_lock(
        self, table: Table, ids: list[str], values: Mapping[str, Any]
    ) -> list[Mapping[Any, Any]]:
        """The rows of ``table`` with these external ids (sorted), locked.

        The missing rows are created with ``values`` by one insert, which returns their ids and
        locks them; the others are then locked by a SELECT, in external_id order as the insert
        took the new ones. A created row holds ``values`` and NULL elsewhere, so only its id is
        read back: reading whole rows cost the client more than the insert itself. That holds
        for a table whose columns have no default but those given in ``values`` (checked here)
        and no trigger (``orders`` has none)."""
        defaulted = [
            c.key
            for c in table.c
            if c.server_default is not None or (c.default is not None and c.key not in values)
        ]
        if defaulted:
            raise ValueError(f"{table.name}: created rows would not show {defaulted}")
        inserted = insert_rows(
            self.session,
            table,
            [{"external_id": external_id, **values} for external_id in ids],
            ignoring=["external_id"],
            returning=[table.c.id, table.c.external_id],
        )
        assert inserted is not None
        blank = {**dict.fromkeys(table.c.keys()), **values}
        rows: list[Mapping[Any, Any]] = [{**blank, **row} for row in inserted.mappings()]
        created = {row["external_id"] for row in rows}
        existing = [external_id for external_id in ids if external_id not in created]
        if existing:
            rows += self._lock(table, existing)
        return rows

    def _lock(self, table: Table, ids: list[str]) -> Sequence[RowMapping]:
        """The stored rows of ``table`` with these external ids, locked in that order."""

        def build(match: Match) -> Select[Any]:
            wanted = match(table.c.external_id)
            return select(table).where(wanted).order_by(table.c.external_id).with_for_update()

        return select_any(self.session, ("lock", table), build, ids).mappings().all()

    def load_orders(self, live: list[int]) -> None:
        ids = sorted({self.items[i].event.order_id for i in live})
        if not ids:
            return
        rows = self._create_and_lock(
            table_of(Order), ids, {"is_test": False, "created_at": utcnow()}
        )
        # Keyed by the shop's id: the order in which it is filled means nothing.
        for row in rows:
            self.orders[row["external_id"]] = _order(row)

    def load_customers(self, purchases: list[PurchaseCompleted]) -> None:
        """The purchases' tombstones (an erased customer's purchase of an order recorded before
        is unlinked too), then the customers of those whose order is not recorded yet: the
        stored ones locked in ``external_id`` order, the others held blank under a negative
        stand-in id until the run's writes insert them with their values (``ingest.batch``).

        No other transaction can create one of them in between: every writer of a customer row
        holds its subject's lock (:func:`~models.erasure.lock_subject`), taken here first by
        :func:`~models.erasure.erased_at_many` (SQLite has a single writer). Inserting them at
        the end, not as blank rows to be updated, spares each new customer a second version of
        its row and of its index entries."""
        self.erased = erased_at_many(self.session, [p.customer.id for p in purchases])
        ids = sorted(
            {
                p.customer.id
                for p in purchases
                if self.orders[p.order_id].purchased_at is None and not self._erased_before(p)
            }
        )
        if not ids:
            return
        table = table_of(Customer)
        for row in self._lock(table, ids):
            self._hold(_customer(row))
        now = utcnow()
        blank = dict.fromkeys(table.c.keys())
        missing = ContactStatus.missing
        for number, external_id in enumerate(
            (external_id for external_id in ids if external_id not in self.customers), start=1
        ):
            customer = _customer(
                {
                    **blank,
                    "id": -number,
                    "external_id": external_id,
                    "email_status": missing,
                    "phone_status": missing,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            self.created.add(customer.id)
            self._hold(customer)

    def _hold(self, customer: Customer) -> None:
        self.customers[customer.external_id] = customer
        self.by_id[customer.id] = customer

    def load_surveys(self, anchored: list[Order]) -> None:
        table = table_of(Survey)
        order_ids = sorted(order.id for order in anchored)
        if order_ids:
            for row in (
                self.session.execute(
                    select(table).where(is_any(self.session, table.c.order_id, order_ids))
                )
                .mappings()
                .all()
            ):
                self.surveys[row["order_id"]] = cast(Survey, Held(row))
        wanted = sorted(
            {
                s.customer_id
                for s in self.surveys.values()
                if s.state in PENDING and s.customer_id not in self.by_id
            }
        )
        if wanted:
            customers = table_of(Customer)
            for row in (
                self.session.execute(
                    select(customers).where(is_any(self.session, customers.c.id, wanted))
                )
                .mappings()
                .all()
            ):
                self.by_id[row["id"]] = _customer(row)

    def load_history(self) -> None:
        """Consent records and counted surveys of the stored customers (a new one has none: it
        is not stored before the run's writes)."""
        ids = sorted(c.id for c in self.customers.values() if c.id not in self.created)
        if not ids:
            return
        consents = table_of(ConsentRecord)
        for row in self.session.execute(
            select(
                consents.c.customer_id,
                consents.c.channel,
                consents.c.granted,
                consents.c.captured_at,
                consents.c.recorded_at,
                consents.c.id,
            ).where(is_any(self.session, consents.c.customer_id, ids))
        ).all():
            self.book.load(*row)
        surveys, orders = table_of(Survey), table_of(Order)
        for customer_id, purchased_at in self.session.execute(
            select(surveys.c.customer_id, orders.c.purchased_at)
            .join(orders, orders.c.id == surveys.c.order_id)
            .where(
                is_any(self.session, surveys.c.customer_id, ids),
                surveys.c.state.not_in([s.value for s in NOT_COUNTED_FOR_CAP]),
                orders.c.purchased_at.is_not(None),
            )
        ).all():
            self.counted.setdefault(customer_id, []).append(purchased_at)

    def _erased_before(self, event: PurchaseCompleted) -> bool:
        tombstone = self.erased.get(event.customer.id)
        return tombstone is not None and event.occurred_at <= tombstone
