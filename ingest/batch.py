"""Set-based application of a run of purchases and anchor events (fulfilment, delivery).

``ingest.service`` cuts a batch into runs of these event types, each holding at most one event
per order and per event id, and applies the other types one by one between them. A run costs a
fixed number of statements whatever its length:

1. the ledger rows of its events (one ``INSERT ... ON CONFLICT DO NOTHING RETURNING``), and the
   recorded fingerprints of those already there (duplicates and conflicts apply nothing);
2. its orders, created when missing and then locked in ``external_id`` order;
3. the purchases' subjects, locked and checked for a tombstone (``models.erasure``), then their
   customers, created when missing and locked in ``external_id`` order;
4. the anchor events' surveys and their customers, the customers' consent records and the
   purchase times of their surveys that count for the frequency cap;
5. then, after planning in memory event by event in the order given (``ingest.batch_plan``,
   ``dispatch.planning.compute_schedule``): bulk updates of customers and orders, bulk inserts
   of consent records, skip reasons and surveys, and the re-planned surveys' schedules, their
   states moved by :func:`models.surveys.move`.

Locks are taken in the order of the per-event path (ledger, orders, subjects, customers), each
kind in a stable order, so two runs touching the same rows wait for each other instead of
deadlocking. Any error leaves the caller to roll the batch back and apply it event by event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from sqlalchemy import Insert, Table, bindparam, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from dispatch.planning import compute_schedule
from ingest.apply import (
    ANCHOR_EVENTS,
    SHOP_SOURCE,
    ApplyContext,
    fill_order,
    record_anchor,
    update_customer,
)
from ingest.batch_plan import ConsentBook, decide, schedule_values
from ingest.outcome import Ignored, Outcome, Planned, Recorded, Skipped
from ingest.schema import OrderEvent, PurchaseCompleted
from models import (
    ConsentRecord,
    Customer,
    InboundEvent,
    Order,
    SkippedPurchase,
    SkipReason,
    Survey,
    SurveyState,
    move,
    utcnow,
)
from models.customers import ContactStatus
from models.erasure import erased_at_many, forget_subjects, subject_key
from models.lifecycle import PENDING_STATES

__all__ = ["RUN_TYPES", "Done", "RunItem", "apply_run"]

RUN_TYPES: Final = frozenset({"purchase.completed", *ANCHOR_EVENTS})
_NOT_COUNTED_FOR_CAP: Final = (SurveyState.withdrawn, SurveyState.suppressed, SurveyState.failed)
_PENDING: Final = sorted(s.value for s in PENDING_STATES)

_CUSTOMER_FIELDS: Final = (
    "email",
    "email_status",
    "phone",
    "phone_status",
    "first_name",
    "locale",
    "timezone",
    "country",
    "previous_orders",
    "updated_at",
)
_ORDER_FIELDS: Final = (
    "customer_id",
    "purchased_at",
    "fulfilled_at",
    "delivered_at",
    "total_amount",
    "currency",
    "category",
    "categories",
    "sales_channel",
    "country",
    "previous_orders",
    "is_test",
)
_SCHEDULE_FIELDS: Final = (
    "anchor_kind",
    "anchor_at",
    "anchor_deadline",
    "delay_seconds",
    "rule_index",
    "arm",
    "timezone",
    "due_at",
    "config_version",
)


@dataclass(frozen=True, slots=True)
class RunItem:
    event: PurchaseCompleted | OrderEvent
    digest: str
    subject: str | None


@dataclass(frozen=True, slots=True)
class Done:
    """What one event of the run did: accepted (``said``, ``effect``), or found in the ledger
    already (``recorded``: the fingerprint and type recorded under its event id)."""

    said: str | None = None
    effect: Outcome | None = None
    recorded: tuple[str | None, str | None] | None = None


def _insert(session: Session, table: Table, ignoring: Sequence[str] = ()) -> Insert:
    """``INSERT`` for the session's backend; with ``ignoring``, ``ON CONFLICT (ignoring) DO
    NOTHING`` (a concurrent insert of the same key waits for that transaction, then inserts
    nothing)."""
    if session.get_bind().dialect.name == "postgresql":
        pg = postgresql_insert(table)
        return pg.on_conflict_do_nothing(index_elements=list(ignoring)) if ignoring else pg
    lite = sqlite_insert(table)
    return lite.on_conflict_do_nothing(index_elements=list(ignoring)) if ignoring else lite


def _table(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _bulk_update(
    session: Session,
    table: Table,
    fields: Sequence[str],
    rows: list[dict[str, Any]],
    *only_when: Any,
) -> None:
    """``UPDATE table SET fields WHERE id = ...`` for every row, as one executemany."""
    if not rows:
        return
    statement = (
        update(table)
        .where(table.c.id == bindparam("row_id", type_=table.c.id.type), *only_when)
        .values({name: bindparam(f"v_{name}", type_=table.c[name].type) for name in fields})
    )
    params = [
        {"row_id": row["id"], **{f"v_{name}": row[name] for name in fields}}
        for row in sorted(rows, key=lambda row: int(row["id"]))
    ]
    session.execute(statement, params)


def _values(obj: Any, fields: Iterable[str]) -> dict[str, Any]:
    return {"id": obj.id, **{name: getattr(obj, name) for name in fields}}


class _Held:
    """A row held in memory for the run: its columns as plain attributes.

    Building ORM instances and setting their instrumented attributes cost more than the rest
    of planning; the planning functions only read and set attributes, so plain objects stand in
    for the model they are cast to (written back with :func:`_bulk_update`)."""

    def __init__(self, row: Mapping[Any, Any]) -> None:
        self.__dict__.update(row)


class _HeldCustomer(_Held):
    def contact_for(self, channel: str) -> tuple[str | None, str]:
        return Customer.contact_for(cast(Customer, self), channel)


def _order(row: Mapping[Any, Any]) -> Order:
    return cast(Order, _Held(row))


def _customer(row: Mapping[Any, Any]) -> Customer:
    return cast(Customer, _HeldCustomer(row))


class _Run:
    """The rows one run touches, loaded once, changed in memory, written once."""

    def __init__(self, session: Session, items: list[RunItem], ctx: ApplyContext) -> None:
        self.session = session
        self.items = items
        self.ctx = ctx
        self.orders: dict[str, Order] = {}
        self.customers: dict[str, Customer] = {}  # locked, by the shop's id
        self.by_id: dict[int, Customer] = {}
        self.surveys: dict[int, Survey] = {}  # of the anchor events' orders, by order id
        self.erased: dict[str, Any] = {}
        self.book = ConsentBook()
        self.counted: dict[int, list[Any]] = {}

    # -- loading ------------------------------------------------------------------------------

    def claim(self) -> tuple[list[int], dict[str, tuple[str | None, str | None]]]:
        """Ledger rows for every event; returns the indexes claimed and, for the others, what
        is recorded under their event id."""
        table = _table(InboundEvent)
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
        statement = _insert(self.session, table, ["source", "external_id"]).returning(
            table.c.external_id
        )
        claimed = set(self.session.execute(statement, rows).scalars())
        others = sorted({item.event.event_id for item in self.items} - claimed)
        recorded: dict[str, tuple[str | None, str | None]] = {}
        if others:
            for external_id, digest, event_type in self.session.execute(
                select(table.c.external_id, table.c.fingerprint, table.c.event_type).where(
                    table.c.source == SHOP_SOURCE, table.c.external_id.in_(others)
                )
            ):
                recorded[external_id] = (digest, event_type)
        live = [i for i, item in enumerate(self.items) if item.event.event_id in claimed]
        return live, recorded

    def load_orders(self, live: list[int]) -> None:
        table = _table(Order)
        ids = sorted({self.items[i].event.order_id for i in live})
        if not ids:
            return
        created = utcnow()
        self.session.execute(
            _insert(self.session, table, ["external_id"]),
            [
                {"external_id": external_id, "is_test": False, "created_at": created}
                for external_id in ids
            ],
        )
        rows = self.session.execute(
            select(table)
            .where(table.c.external_id.in_(ids))
            .order_by(table.c.external_id)
            .with_for_update()
        )
        for row in rows.mappings():
            self.orders[row["external_id"]] = _order(row)

    def load_customers(self, purchases: list[PurchaseCompleted]) -> None:
        self.erased = erased_at_many(self.session, [p.customer.id for p in purchases])
        ids = sorted({p.customer.id for p in purchases if not self._erased_before(p)})
        table = _table(Customer)
        if ids:
            now = utcnow()
            missing = ContactStatus.missing
            self.session.execute(
                _insert(self.session, table, ["external_id"]),
                [
                    {
                        "external_id": external_id,
                        "email_status": missing,
                        "phone_status": missing,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for external_id in ids
                ],
            )
            rows = self.session.execute(
                select(table)
                .where(table.c.external_id.in_(ids))
                .order_by(table.c.external_id)
                .with_for_update()
            )
            for row in rows.mappings():
                customer = _customer(row)
                self.customers[customer.external_id] = customer
                self.by_id[customer.id] = customer

    def load_surveys(self, anchored: list[Order]) -> None:
        table = _table(Survey)
        order_ids = sorted(order.id for order in anchored)
        if order_ids:
            for row in self.session.execute(
                select(table).where(table.c.order_id.in_(order_ids))
            ).mappings():
                self.surveys[row["order_id"]] = cast(Survey, _Held(row))
        wanted = sorted(
            {
                s.customer_id
                for s in self.surveys.values()
                if s.state in _PENDING and s.customer_id not in self.by_id
            }
        )
        if wanted:
            customers = _table(Customer)
            for row in self.session.execute(
                select(customers).where(customers.c.id.in_(wanted))
            ).mappings():
                self.by_id[row["id"]] = _customer(row)

    def load_history(self) -> None:
        ids = sorted(customer.id for customer in self.customers.values())
        if not ids:
            return
        consents = _table(ConsentRecord)
        for row in self.session.execute(
            select(
                consents.c.customer_id,
                consents.c.channel,
                consents.c.granted,
                consents.c.captured_at,
                consents.c.recorded_at,
                consents.c.id,
            ).where(consents.c.customer_id.in_(ids))
        ):
            self.book.load(*row)
        surveys, orders = _table(Survey), _table(Order)
        for customer_id, purchased_at in self.session.execute(
            select(surveys.c.customer_id, orders.c.purchased_at)
            .join(orders, orders.c.id == surveys.c.order_id)
            .where(
                surveys.c.customer_id.in_(ids),
                surveys.c.state.not_in([s.value for s in _NOT_COUNTED_FOR_CAP]),
                orders.c.purchased_at.is_not(None),
            )
        ):
            self.counted.setdefault(customer_id, []).append(purchased_at)

    def _erased_before(self, event: PurchaseCompleted) -> bool:
        tombstone = self.erased.get(event.customer.id)
        return tombstone is not None and event.occurred_at <= tombstone


def apply_run(session: Session, items: list[RunItem], ctx: ApplyContext) -> list[Done]:
    """Apply a run (see the module's docstring); one :class:`Done` per item, in order."""
    run = _Run(session, items, ctx)
    live, recorded = run.claim()
    done: list[Done | None] = [None] * len(items)
    taken = set(live)
    for i, item in enumerate(items):
        if i not in taken:
            done[i] = Done(recorded=recorded.get(item.event.event_id, (None, None)))
    run.load_orders(live)
    purchases = [
        event
        for i in live
        if isinstance(event := items[i].event, PurchaseCompleted)
        and run.orders[event.order_id].purchased_at is None
    ]
    run.load_customers(purchases)
    run.load_surveys(
        [
            order
            for i in live
            if not isinstance(items[i].event, PurchaseCompleted)
            and (order := run.orders[items[i].event.order_id]).purchased_at is not None
        ]
    )
    run.load_history()
    writes = _Writes()
    for i in live:
        event = items[i].event
        if isinstance(event, PurchaseCompleted):
            done[i] = _purchase(run, writes, event)
        else:
            done[i] = _anchor(run, writes, event, i)
    writes.flush(run, done)
    return [d if d is not None else Done(recorded=(None, None)) for d in done]


class _Writes:
    """What the run will write, gathered while planning."""

    def __init__(self) -> None:
        self.consents: list[dict[str, Any]] = []
        self.skips: list[dict[str, Any]] = []
        self.surveys: list[dict[str, Any]] = []
        # (index of the event in the run, survey, its new state, its new schedule)
        self.replans: list[tuple[int, Survey, SurveyState, dict[str, Any]]] = []
        self.forget: set[str] = set()

    def flush(self, run: _Run, done: list[Done | None]) -> None:
        session = run.session
        _bulk_update(
            session,
            _table(Customer),
            _CUSTOMER_FIELDS,
            [_values(c, _CUSTOMER_FIELDS) for c in run.customers.values()],
        )
        _bulk_update(
            session,
            _table(Order),
            _ORDER_FIELDS,
            [_values(o, _ORDER_FIELDS) for o in run.orders.values()],
        )
        if self.consents:
            session.execute(_insert(session, _table(ConsentRecord)), self.consents)
        if self.skips:
            session.execute(_insert(session, _table(SkippedPurchase)), self.skips)
        if self.surveys:
            session.execute(_insert(session, _table(Survey)), self.surveys)
        if self.replans:
            self._replan(run, done)
        forget_subjects(session, self.forget)

    def _replan(self, run: _Run, done: list[Done | None]) -> None:
        """The re-planned surveys' schedules, written while they are still pending (which also
        locks them), then their states moved (``move`` records each transition)."""
        session, now = run.session, run.ctx.now
        surveys = _table(Survey)
        _bulk_update(
            session,
            surveys,
            _SCHEDULE_FIELDS,
            [{"id": survey.id, **values} for _, survey, _, values in self.replans],
            # Not IN (...): an expanding parameter cannot go into an executemany.
            or_(*(surveys.c.state == state for state in _PENDING)),
        )
        moved: set[int] = set()
        for target in sorted({target for _, _, target, _ in self.replans}):
            ids = sorted(s.id for _, s, t, _ in self.replans if t == target)
            moved.update(
                move(session, ids, target, reason="re-planned", only_from=PENDING_STATES, now=now)
            )
        stale = [(i, s) for i, s, _, _ in self.replans if s.id not in moved]
        if stale:
            # Queued by the scheduler since it was read: answered as it is now.
            now_is = {
                sid: (state, due_at)
                for sid, state, due_at in session.execute(
                    select(surveys.c.id, surveys.c.state, surveys.c.due_at).where(
                        surveys.c.id.in_([s.id for _, s in stale])
                    )
                )
            }
            for i, survey in stale:
                state, due_at = now_is.get(survey.id, (None, None))
                done[i] = Done(
                    "not pending",
                    Recorded(purchase_recorded=True, survey_state=state, due_at=due_at),
                )


def _purchase(run: _Run, writes: _Writes, event: PurchaseCompleted) -> Done:
    order = run.orders[event.order_id]
    if order.purchased_at is not None:
        return Done("order already recorded", Ignored(reason="order_already_recorded"))
    now = run.ctx.now
    if run._erased_before(event):
        # A late event about an erased customer: count the purchase, keep no personal data
        # (nor a ledger row tied to them).
        fill_order(order, event, customer_id=None)
        writes.skips.append(_skip(order, SkipReason.erased, None))
        writes.forget.add(subject_key(event.customer.id))
        return Done("customer erased", Skipped(reason=SkipReason.erased.value))
    customer = run.customers[event.customer.id]
    update_customer(customer, event.customer)
    customer.updated_at = utcnow()
    if event.consent is not None and event.consent.channels():
        captured = event.consent.captured_at or event.occurred_at
        for channel, granted in event.consent.channels().items():
            writes.consents.append(
                {
                    "customer_id": customer.id,
                    "channel": channel,
                    "granted": granted,
                    "source": event.consent.source,
                    "text_version": event.consent.text_version,
                    "captured_at": captured,
                    "recorded_at": now,
                    "evidence_kind": "event",
                    "evidence_ref": event.event_id,
                }
            )
            run.book.add(customer.id, channel, granted, captured, now)
    fill_order(order, event, customer_id=customer.id)
    config = run.ctx.config
    counted = run.counted.setdefault(customer.id, [])
    decision = decide(order, customer, config, run.book, counted)
    if decision.channel is None:
        reason = decision.skip or SkipReason.no_consent
        writes.skips.append(_skip(order, reason, decision.detail))
        return Done(
            f"skipped: {reason.value}", Skipped(reason=reason.value, detail=decision.detail)
        )
    schedule = compute_schedule(order, customer, decision.channel, config, now)
    writes.surveys.append(
        {
            "order_id": order.id,
            "customer_id": customer.id,
            "channel": decision.channel,
            "state": schedule.state.value,
            "state_changed_at": now,
            "planned_at": now,
            "tried_channels": decision.channel,
            **schedule_values(schedule, config),
        }
    )
    if order.purchased_at is not None:
        counted.append(order.purchased_at)
    return Done(
        f"planned: {decision.channel}, {schedule.state.value}",
        Planned(
            survey_state=schedule.state.value, channel=decision.channel, due_at=schedule.due_at
        ),
    )


def _skip(order: Order, reason: SkipReason, detail: str | None) -> dict[str, Any]:
    return {"order_id": order.id, "reason": reason.value, "detail": detail, "created_at": utcnow()}


def _anchor(run: _Run, writes: _Writes, event: OrderEvent, index: int) -> Done:
    order = run.orders[event.order_id]
    record_anchor(order, event)
    if order.purchased_at is None:
        return Done("kept until the purchase arrives", Recorded(purchase_recorded=False))
    survey = run.surveys.get(order.id)
    if survey is None or survey.state not in _PENDING:
        return Done(
            "anchor recorded",
            Recorded(
                purchase_recorded=True,
                survey_state=survey.state if survey else None,
                due_at=survey.due_at if survey else None,
            ),
        )
    customer = run.by_id[survey.customer_id]
    config = run.ctx.config
    schedule = compute_schedule(order, customer, survey.channel, config, run.ctx.now)
    writes.replans.append((index, survey, schedule.state, schedule_values(schedule, config)))
    return Done(
        f"re-planned: {schedule.state.value}",
        Recorded(purchase_recorded=True, survey_state=schedule.state.value, due_at=schedule.due_at),
    )
