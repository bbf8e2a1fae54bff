"""Planning: does a purchase get a survey, on which channel, and when is it due.

Called by ingest (purchases, anchor events) and by the scheduler (anchor time-outs, re-planning
after a config change). The timing arithmetic itself is pure and lives in
:mod:`dispatch.timing`; this module reads and writes rows. Stopping a planned survey (a
cancellation, a revoked consent) is in :mod:`dispatch.stopping`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from channels.registry import enabled_channels
from config import OperatorConfig
from config.settings import environ
from dispatch import timing
from models import Customer, Order, SkipReason, Survey, SurveyState, current_consent, move
from models.customers import ContactStatus
from models.lifecycle import PENDING_STATES
from models.surveys import Move, move_each, record_skip

S = SurveyState
NOT_COUNTED_FOR_CAP = (S.withdrawn, S.suppressed, S.failed)
"""Survey states that do not count for the frequency cap (nothing reached the customer)."""


class PlanningError(RuntimeError):
    """An invariant of planning does not hold (a bug or a damaged row, never bad input)."""


def unit_hash(key: str) -> float:
    """A uniform number in [0, 1) from a key: reproducible sampling decisions."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def survey_key(order: Order) -> str:
    return f"order:{order.external_id}"


@dataclass(frozen=True, slots=True)
class ChannelChoice:
    channel: str | None
    skip: SkipReason | None


def choose_channel(
    session: Session, customer: Customer, config: OperatorConfig, exclude: tuple[str, ...] = ()
) -> ChannelChoice:
    """The first channel in the operator's preference with a current grant and a valid contact,
    among the channels whose provider is configured in this deployment."""
    return choose_channel_with(
        lambda channel: current_consent(session, customer.id, channel), customer, config, exclude
    )


def channels_on() -> frozenset[str]:
    """The channels whose provider this deployment configures (read from the environment)."""
    return enabled_channels(environ())


def choose_channel_with(
    consented: Callable[[str], bool],
    customer: Customer,
    config: OperatorConfig,
    exclude: tuple[str, ...] = (),
    enabled: frozenset[str] | None = None,
) -> ChannelChoice:
    """:func:`choose_channel` with each channel's current consent read from ``consented``
    (the set-based ingest path passes the consent it loaded for a whole batch) and, when given,
    the channels that are on from ``enabled`` (read once per batch: reading the environment
    costs more than the rest of the choice)."""
    if enabled is None:
        enabled = channels_on()
    consented_without_contact: SkipReason | None = None
    for channel in config.contact.channels:
        if channel in exclude or not consented(channel):
            continue
        _, status = customer.contact_for(channel)
        if status == ContactStatus.valid:
            if channel not in enabled:
                consented_without_contact = consented_without_contact or SkipReason.no_channel
                continue
            return ChannelChoice(channel, None)
        if status == ContactStatus.invalid or consented_without_contact is None:
            consented_without_contact = (
                SkipReason.invalid_contact
                if status == ContactStatus.invalid
                else SkipReason.no_contact
            )
    return ChannelChoice(None, consented_without_contact or SkipReason.no_consent)


@dataclass(frozen=True, slots=True)
class Decision:
    """What planning decides for a purchase: a channel, or the reason (and detail) it is
    skipped."""

    channel: str | None
    skip: SkipReason | None
    detail: str | None = None


def decide_purchase(
    order: Order,
    customer: Customer,
    config: OperatorConfig,
    consented: Callable[[str], bool],
    capped: Callable[[], bool],
    enabled: frozenset[str] | None = None,
) -> Decision:
    """The rule of :func:`plan_purchase`, in its order: cancelled, test order, minimum total,
    the first channel with a current grant, a valid contact and a configured provider
    (:func:`choose_channel_with`), sampling, then the frequency cap. ``consented(channel)``
    is the customer's current consent on a channel; ``capped()`` whether another survey of the
    customer counts against this purchase (asked last, only when everything else passed);
    ``enabled`` the channels that are on (:func:`channels_on` when not given)."""
    contact = config.contact
    if order.cancelled_at is not None:
        return Decision(None, SkipReason.cancelled, order.cancel_kind)
    if order.is_test and contact.exclude.test_orders:
        return Decision(None, SkipReason.excluded_test_order)
    if order.total_amount is not None and order.total_amount < contact.exclude.min_total:
        return Decision(None, SkipReason.excluded_min_total)
    choice = choose_channel_with(consented, customer, config, enabled=enabled)
    if choice.skip is not None:
        return Decision(None, choice.skip)
    if unit_hash(f"sample:{order.external_id}") >= contact.sample_rate:
        return Decision(None, SkipReason.sampled_out)
    if capped():
        return Decision(None, SkipReason.frequency_cap)
    if choice.channel is None:
        raise PlanningError(f"order {order.id}: no channel and no skip reason")
    return Decision(choice.channel, None)


def within_cap(counted: Sequence[datetime], purchased_at: datetime, cap: timedelta) -> bool:
    """Another counted survey of the customer whose purchase lies within ``cap`` either way
    (the frequency cap over purchase times already loaded; the query below is the same test)."""
    if cap <= timedelta(0):
        return False
    return any(purchased_at - cap < at < purchased_at + cap for at in counted)


@dataclass(frozen=True, slots=True)
class Schedule:
    state: SurveyState
    anchor_kind: str
    anchor_at: datetime | None
    anchor_deadline: datetime | None
    delay: timedelta
    rule_index: int | None
    arm: str | None
    timezone: str
    due_at: datetime


def compute_schedule(
    order: Order, customer: Customer, channel: str, config: OperatorConfig, now: datetime
) -> Schedule:
    sched = config.schedule
    if order.purchased_at is None:
        raise PlanningError(f"order {order.id}: a survey is planned only once it is purchased")
    choice = timing.select_delay(
        config,
        category=order.category,
        channel=channel,
        country=order.country or customer.country,
        sales_channel=order.sales_channel,
    )
    key = survey_key(order)
    arm = timing.choose_arm(sched.arms, key)
    delay = arm.delay if arm is not None else choice.delay
    tz = timing.resolve_timezone(
        customer.timezone,
        customer.phone,
        order.country or customer.country,
        sched.default_timezone,
        phone_zone=customer.phone_timezone,
    )
    anchor = timing.effective_anchor(
        sched.anchor,
        purchased_at=order.purchased_at,
        fulfilled_at=order.fulfilled_at,
        delivered_at=order.delivered_at,
        anchor_timeout=sched.anchor_timeout,
        now=now,
    )
    common = {
        "delay": delay,
        "rule_index": choice.rule_index,
        "arm": arm.name if arm is not None else None,
        "timezone": tz.key,
    }
    if anchor.anchor_at is None:
        if anchor.waiting_until is None:
            raise PlanningError(f"order {order.id}: no anchor and no anchor deadline")
        return Schedule(
            state=S.waiting_anchor,
            anchor_kind=sched.anchor,
            anchor_at=None,
            anchor_deadline=anchor.waiting_until,
            due_at=anchor.waiting_until,  # when the scheduler looks again
            **common,  # type: ignore[arg-type]
        )
    due = timing.plan_due_time(
        anchor.anchor_at, delay, sched.jitter, key, tz, sched.quiet_hours, sched.send_days
    )
    return Schedule(
        state=S.scheduled,
        anchor_kind=anchor.kind_used,
        anchor_at=anchor.anchor_at,
        anchor_deadline=None,
        due_at=due,
        **common,  # type: ignore[arg-type]
    )


def schedule_values(schedule: Schedule, config: OperatorConfig) -> dict[str, object]:
    """The survey columns a schedule fills."""
    return {
        "anchor_kind": schedule.anchor_kind,
        "anchor_at": schedule.anchor_at,
        "anchor_deadline": schedule.anchor_deadline,
        "delay_seconds": int(schedule.delay.total_seconds()),
        "rule_index": schedule.rule_index,
        "arm": schedule.arm,
        "timezone": schedule.timezone,
        "due_at": schedule.due_at,
        # Of the [schedule] section only: an edit elsewhere re-plans nothing.
        "config_version": config.schedule_version,
    }


def _within_frequency_cap(
    session: Session, customer: Customer, order: Order, cap: timedelta
) -> bool:
    if order.purchased_at is None:
        raise PlanningError(f"order {order.id}: frequency cap checked before its purchase")
    if cap <= timedelta(0):
        return False
    hit = session.scalar(
        select(Survey.id)
        .join(Order, Order.id == Survey.order_id)
        .where(
            Survey.customer_id == customer.id,
            Survey.state.not_in([s.value for s in NOT_COUNTED_FOR_CAP]),
            Order.purchased_at > order.purchased_at - cap,
            Order.purchased_at < order.purchased_at + cap,
        )
        .limit(1)
    )
    return hit is not None


def plan_purchase(
    session: Session, order: Order, customer: Customer, config: OperatorConfig, now: datetime
) -> str:
    """Plan one survey for a purchase, or record why not. Returns a short outcome."""
    decision = decide_purchase(
        order,
        customer,
        config,
        lambda channel: current_consent(session, customer.id, channel),
        lambda: _within_frequency_cap(session, customer, order, config.contact.frequency_cap),
    )
    if decision.channel is None:
        reason = decision.skip or SkipReason.no_consent
        record_skip(session, order.id, reason, decision.detail)
        return f"skipped: {reason.value}"
    channel = decision.channel
    schedule = compute_schedule(order, customer, channel, config, now)
    survey = Survey(
        order_id=order.id,
        customer_id=customer.id,
        channel=channel,
        state=schedule.state.value,
        state_changed_at=now,
        planned_at=now,
        tried_channels=channel,
        **schedule_values(schedule, config),
    )
    session.add(survey)
    session.flush()
    return f"planned: {channel}, {schedule.state.value}"


def skip_erased(session: Session, order: Order) -> None:
    record_skip(session, order.id, SkipReason.erased)


def _survey_of(session: Session, order: Order) -> Survey | None:
    return session.scalar(select(Survey).where(Survey.order_id == order.id))


def on_anchor_event(session: Session, order: Order, config: OperatorConfig, now: datetime) -> str:
    """An anchor (fulfilled/delivered) arrived: a survey waiting for it gets its due time."""
    survey = _survey_of(session, order)
    if survey is None or survey.state not in PENDING_STATES:
        return "anchor recorded"
    return replan(session, survey, config, now)


def replan(session: Session, survey: Survey, config: OperatorConfig, now: datetime) -> str:
    """Recompute a pending survey's schedule under ``config`` (anchor, delay, quiet hours)."""
    order = session.get(Order, survey.order_id)
    customer = session.get(Customer, survey.customer_id)
    if order is None or customer is None:
        raise PlanningError(f"survey {survey.id}: its order or customer row is missing")
    schedule = compute_schedule(order, customer, survey.channel, config, now)
    moved = move(
        session,
        survey.id,
        schedule.state,
        reason="re-planned",
        only_from=PENDING_STATES,
        now=now,
        **schedule_values(schedule, config),
    )
    return f"re-planned: {schedule.state.value}" if moved else "not pending"


def replan_many(
    session: Session, surveys: Sequence[Survey], config: OperatorConfig, now: datetime
) -> int:
    """:func:`replan` for many pending surveys held locked by the caller: their orders and
    customers read in two queries, and the moves written by :func:`models.surveys.move_each`
    (one statement per survey on PostgreSQL, as each gets its own schedule). Returns how many
    moved."""
    if not surveys:
        return 0
    orders = {
        o.id: o
        for o in session.scalars(select(Order).where(Order.id.in_({s.order_id for s in surveys})))
    }
    customers = {
        c.id: c
        for c in session.scalars(
            select(Customer).where(Customer.id.in_({s.customer_id for s in surveys}))
        )
    }
    moves: list[Move] = []
    for survey in surveys:
        order, customer = orders.get(survey.order_id), customers.get(survey.customer_id)
        if order is None or customer is None:
            raise PlanningError(f"survey {survey.id}: its order or customer row is missing")
        schedule = compute_schedule(order, customer, survey.channel, config, now)
        values = tuple(schedule_values(schedule, config).items())
        moves.append(Move(survey.id, S(survey.state), schedule.state, "re-planned", values))
    return len(move_each(session, moves, now=now))
