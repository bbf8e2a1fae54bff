"""Set-based application of a run of purchases and anchor events (fulfilment, delivery).

``ingest.service`` cuts a batch into runs of these event types, each holding at most one event
per order and per event id, and applies the other types one by one between them. A run costs a
fixed number of statements whatever its length:

1. the ledger rows of its events (one ``INSERT ... ON CONFLICT DO NOTHING RETURNING``), and the
   recorded fingerprints and subject keys of those already there (duplicates and conflicts
   apply nothing; one whose row an earlier event of the run unlinks is a duplicate);
2. its orders, created when missing (the insert returns and locks them), the others then
   locked in ``external_id`` order;
3. the purchases' subjects, locked and checked for a tombstone (``models.erasure``), then their
   stored customers, locked in ``external_id`` order (a new customer is held blank under a
   stand-in id, and inserted with its values in step 5);
4. the anchor events' surveys and their customers, the customers' consent records and the
   purchase times of their surveys that count for the frequency cap;
5. then, after planning in memory event by event in the order given (``ingest.batch_plan``,
   ``dispatch.planning.compute_schedule``): a bulk insert of the new customers (their stand-in
   ids then replaced by the ids stored), bulk updates of the stored customers and of orders,
   bulk inserts of consent records, skip reasons and surveys, and the re-planned surveys'
   schedules, their states moved by :func:`models.surveys.move`.

Locks are taken in the order of the per-event path (ledger, orders, subjects, customers), each
kind in a stable order, so two runs touching the same rows wait for each other instead of
deadlocking. Any error leaves the caller to roll the batch back and apply it event by event.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import or_, select
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
from ingest.batch_load import PENDING, Run, RunItem, table_of
from ingest.batch_plan import decide, schedule_values
from ingest.outcome import Ignored, Outcome, Planned, Recorded, Skipped
from ingest.schema import OrderEvent, PurchaseCompleted
from models import (
    ConsentRecord,
    Customer,
    Order,
    SkippedPurchase,
    SkipReason,
    Survey,
    SurveyState,
    move,
    utcnow,
)
from models.bulk import insert_rows, is_any, update_rows
from models.erasure import forget_subjects, subject_key
from models.lifecycle import PENDING_STATES

__all__ = ["RUN_TYPES", "Done", "RunItem", "apply_run"]

RUN_TYPES: Final = frozenset({"purchase.completed", *ANCHOR_EVENTS})

_CUSTOMER_FIELDS: Final = (
    "email",
    "email_status",
    "phone",
    "phone_status",
    "phone_timezone",
    "first_name",
    "locale",
    "timezone",
    "country",
    "previous_orders",
    "updated_at",
)
_NEW_CUSTOMER_FIELDS: Final = ("external_id", *_CUSTOMER_FIELDS, "created_at")
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
class Done:
    """What one event of the run did: accepted (``said``, ``effect``), or found in the ledger
    already (``recorded``: the fingerprint and type recorded under its event id, the fingerprint
    None once an event before it in the run unlinks that row)."""

    said: str | None = None
    effect: Outcome | None = None
    recorded: tuple[str | None, str | None] | None = None


def _values(obj: Any, fields: Iterable[str]) -> dict[str, Any]:
    return {"id": obj.id, **{name: getattr(obj, name) for name in fields}}


def apply_run(session: Session, items: list[RunItem], ctx: ApplyContext) -> list[Done]:
    """Apply a run (see the module's docstring); one :class:`Done` per item, in order."""
    run = Run(session, items, ctx)
    live, recorded = run.claim()
    done: list[Done | None] = [None] * len(items)
    taken = set(live)
    for i, item in enumerate(items):
        if i not in taken:
            done[i] = Done(recorded=recorded.get(item.event.event_id, (None, None)))
    run.load_orders(live)
    run.load_customers(
        [event for i in live if isinstance(event := items[i].event, PurchaseCompleted)]
    )
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
            done[i] = _purchase(run, writes, event, i)
        else:
            done[i] = _anchor(run, writes, event, i)
    for i, item in enumerate(items):
        subject = run.recorded_subjects.get(item.event.event_id)
        if i not in taken and subject in writes.forget and writes.forget[subject][0] < i:
            # Its ledger row is unlinked by an event before it in the run: applied one by one,
            # it would find no digest there to tell a changed copy by, so a duplicate.
            _, event_type = recorded.get(item.event.event_id, (None, None))
            done[i] = Done(recorded=(None, event_type))
    writes.flush(run, done, live)
    return [d if d is not None else Done(recorded=(None, None)) for d in done]


class _Writes:
    """What the run will write, gathered while planning."""

    def __init__(self) -> None:
        self.consents: list[dict[str, Any]] = []
        self.skips: list[dict[str, Any]] = []
        self.surveys: list[dict[str, Any]] = []
        # (index of the event in the run, survey, its new state, its new schedule)
        self.replans: list[tuple[int, Survey, SurveyState, dict[str, Any]]] = []
        # Subjects whose ledger rows to unlink, each with the indexes of the first and the last
        # event in the run doing so: as applied one by one, the rows of the run's events after
        # the last stay linked, and a row recorded before the run is unlinked from the first.
        self.forget: dict[str, tuple[int, int]] = {}

    def unlink(self, subject: str, index: int) -> None:
        """The event at ``index`` in the run unlinks the subject's ledger rows."""
        first, _ = self.forget.get(subject, (index, index))
        self.forget[subject] = (first, index)

    def flush(self, run: Run, done: list[Done | None], live: list[int]) -> None:
        session = run.session
        # Split before the new customers' stand-in ids are replaced by stored ones.
        new = [c for c in run.customers.values() if c.id in run.created]
        stored = [c for c in run.customers.values() if c.id not in run.created]
        self._insert_customers(run, new)
        update_rows(
            session,
            table_of(Customer),
            _CUSTOMER_FIELDS,
            [_values(c, _CUSTOMER_FIELDS) for c in stored],
        )
        update_rows(
            session,
            table_of(Order),
            _ORDER_FIELDS,
            [_values(o, _ORDER_FIELDS) for o in run.orders.values()],
        )
        insert_rows(session, table_of(ConsentRecord), self.consents)
        insert_rows(session, table_of(SkippedPurchase), self.skips)
        insert_rows(session, table_of(Survey), self.surveys)
        if self.replans:
            self._replan(run, done)
        forget_subjects(
            session,
            self.forget,
            sparing=[
                (SHOP_SOURCE, run.items[i].event.event_id)
                for i in live
                if (subject := run.items[i].subject) in self.forget and i > self.forget[subject][1]
            ],
        )

    def _insert_customers(self, run: Run, new: list[Customer]) -> None:
        """The customers the run creates, inserted with their values; their stand-in ids are
        then replaced by the ids stored, on the held customers and in every row still to be
        written (``run.by_id`` and ``run.created`` keep the stand-ins: nothing reads them after
        planning).

        A plain insert: should a row with one of these external ids exist after all (a writer
        not holding the subject's lock), the run fails and its events are applied one by one."""
        created = sorted(new, key=lambda c: c.external_id)
        if not created:
            return
        table = table_of(Customer)
        inserted = insert_rows(
            run.session,
            table,
            [{name: getattr(c, name) for name in _NEW_CUSTOMER_FIELDS} for c in created],
            returning=[table.c.external_id, table.c.id],
        )
        assert inserted is not None
        stored = {row["external_id"]: row["id"] for row in inserted.mappings()}
        real = {c.id: stored[c.external_id] for c in created}
        for customer in created:
            customer.id = real[customer.id]
        for row in (*self.consents, *self.surveys):
            row["customer_id"] = real.get(row["customer_id"], row["customer_id"])
        for order in run.orders.values():
            if order.customer_id is not None:
                order.customer_id = real.get(order.customer_id, order.customer_id)

    def _replan(self, run: Run, done: list[Done | None]) -> None:
        """The re-planned surveys' schedules, written while they are still pending (which also
        locks them), then their states moved (``move`` records each transition)."""
        session, now = run.session, run.ctx.now
        surveys = table_of(Survey)
        update_rows(
            session,
            surveys,
            _SCHEDULE_FIELDS,
            [{"id": survey.id, **values} for _, survey, _, values in self.replans],
            # Not IN (...): an expanding parameter cannot go into an executemany.
            or_(*(surveys.c.state == state for state in PENDING)),
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
                        is_any(session, surveys.c.id, [s.id for _, s in stale])
                    )
                )
            }
            for i, survey in stale:
                state, due_at = now_is.get(survey.id, (None, None))
                done[i] = Done(
                    "not pending",
                    Recorded(purchase_recorded=True, survey_state=state, due_at=due_at),
                )


def _purchase(run: Run, writes: _Writes, event: PurchaseCompleted, index: int) -> Done:
    order = run.orders[event.order_id]
    if order.purchased_at is not None:
        # A second purchase event for one order plans nothing; one about an erased customer
        # keeps nothing tied to them (its own ledger row included) either.
        if run._erased_before(event):
            writes.unlink(subject_key(event.customer.id), index)
        return Done("order already recorded", Ignored(reason="order_already_recorded"))
    now = run.ctx.now
    if run._erased_before(event):
        # A late event about an erased customer: count the purchase, keep no personal data
        # (nor a ledger row tied to them).
        fill_order(order, event, customer_id=None)
        writes.skips.append(_skip(order, SkipReason.erased, None))
        writes.unlink(subject_key(event.customer.id), index)
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
    decision = decide(order, customer, config, run.book, counted, run.enabled)
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


def _anchor(run: Run, writes: _Writes, event: OrderEvent, index: int) -> Done:
    order = run.orders[event.order_id]
    record_anchor(order, event)
    if order.purchased_at is None:
        return Done("kept until the purchase arrives", Recorded(purchase_recorded=False))
    survey = run.surveys.get(order.id)
    if survey is None or survey.state not in PENDING:
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
