"""Claiming due surveys: one batch at a time, with a fixed number of statements per batch.

A batch is taken by one statement: the due ``scheduled`` rows in due order, locked ``FOR UPDATE
SKIP LOCKED`` on PostgreSQL (any number of schedulers share the work without taking the same
row), each with what its re-check needs beside it: its order's cancellation, its customer's
erasure and the current consent for its channel (a correlated subquery, the rule of
:func:`dispatch.consent.consent_granted`). The re-checks then run in Python, quiet hours once
per time zone, and every survey moves in one :func:`models.surveys.move_each`:

- order cancelled or customer erased: ``withdrawn``, with the reason of
  :func:`dispatch.consent.withdrawal_reason`;
- consent gone: handed to :func:`dispatch.stopping.on_consent_revoked` (the fallback channel,
  else ``suppressed``), once per customer and channel, for the batch's own surveys only (the
  customer's others may be held by another scheduler); a revocation normally reaches its
  surveys when it arrives, so this is the rare race, not the common path;
- quiet hours or a non-send day in the recipient's zone *now* (due while the scheduler was
  down): back to ``scheduled`` at the next allowed moment;
- otherwise ``queued``, stamped with the moment of the move.

The batch commits, and only then are its ids enqueued: a crash in between leaves ``queued`` rows
that the stuck-queue sweep enqueues again once their lease runs out, and an enqueue that fails
(Redis down) expires their lease so that the next pass enqueues them; the other order could send
a survey still marked ``scheduled``. Each enqueued survey's lateness (enqueue moment minus due
time) is observed in ``nps_scheduler_lateness_seconds``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from dispatch import stopping, timing
from dispatch.consent import consent_granted, withdrawal_reason
from dispatch.scheduler.upkeep import expire_leases
from dispatch.tick_report import TickReport
from logs.metrics import SCHEDULER_LATENESS
from models import Customer, Order, Survey, SurveyState
from models.surveys import Move, in_states, move_each

S = SurveyState
Clock = Callable[[], datetime]
EnqueueMany = Callable[[Sequence[int]], object]


def claim_batch(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    clock: Clock,
    enqueue_many: EnqueueMany,
    batch_size: int,
    report: TickReport,
) -> int:
    """Claim, re-check and enqueue up to ``batch_size`` due surveys; returns how many rows the
    claim took (a full batch means there may be more)."""
    with factory() as session, session.begin():
        due_by = clock()
        rows = session.execute(
            select(
                Survey.id,
                Survey.customer_id,
                Survey.channel,
                Survey.timezone,
                Survey.due_at,
                Order.cancelled_at,
                Order.cancel_kind,
                Customer.erased_at,
                consent_granted(Survey.customer_id, Survey.channel).label("consent"),
            )
            .join(Order, Order.id == Survey.order_id)
            .join(Customer, Customer.id == Survey.customer_id)
            .where(in_states(S.scheduled), Survey.due_at <= due_by)
            .order_by(Survey.due_at)
            .limit(batch_size)
            .with_for_update(of=Survey, skip_locked=True)
        ).all()
        if not rows:
            return 0
        at = clock()
        moves: list[Move] = []
        revoked: dict[tuple[int, str], list[int]] = {}
        allowed_in: dict[str | None, datetime] = {}
        due: dict[int, datetime] = {}
        for row in rows:
            if row.cancelled_at is not None or row.erased_at is not None:
                reason = withdrawal_reason(
                    Order(cancelled_at=row.cancelled_at, cancel_kind=row.cancel_kind),
                    Customer(erased_at=row.erased_at),
                )
                if reason is not None:
                    moves.append(
                        Move(row.id, S.scheduled, S.withdrawn, reason, (("final_reason", reason),))
                    )
                    continue
            if not row.consent:
                revoked.setdefault((row.customer_id, row.channel), []).append(row.id)
                continue
            if row.timezone not in allowed_in:
                allowed_in[row.timezone] = _next_allowed(config, row.timezone, at)
            allowed = allowed_in[row.timezone]
            if allowed > at:
                # Due while the scheduler was down, and now it is night there: wait.
                moves.append(
                    Move(
                        row.id,
                        S.scheduled,
                        S.scheduled,
                        "quiet hours at claim time",
                        (("due_at", allowed),),
                    )
                )
                continue
            moves.append(Move(row.id, S.scheduled, S.queued, None, (("queued_at", at),)))
            due[row.id] = row.due_at
        for (customer_id, channel), held in sorted(revoked.items()):
            customer = session.get(Customer, customer_id)
            if customer is not None:
                stopping.on_consent_revoked(session, customer, channel, config, at, only=held)
            report.stopped += len(held)
        moved = set(move_each(session, moves, now=at))
        to_enqueue = [m.survey_id for m in moves if m.target == S.queued and m.survey_id in moved]
        report.stopped += sum(1 for m in moves if m.target == S.withdrawn and m.survey_id in moved)
        report.deferred += sum(1 for m in moves if m.target == S.scheduled and m.survey_id in moved)
    if to_enqueue:
        try:
            enqueue_many(to_enqueue)
        except Exception:
            # Committed ``queued``, not on the queue (Redis down, say): the next pass's
            # stuck-queue sweep enqueues them, rather than once their lease has run out.
            expire_leases(factory, to_enqueue)
            raise
        enqueued_at = clock()
        for sid in to_enqueue:
            SCHEDULER_LATENESS.observe(max(0.0, (enqueued_at - due[sid]).total_seconds()))
    report.queued += len(to_enqueue)
    report.enqueued.extend(to_enqueue)
    return len(rows)


def _next_allowed(config: OperatorConfig, zone: str | None, at: datetime) -> datetime:
    """The first moment from ``at`` outside quiet hours and on a send day in ``zone``."""
    tz: ZoneInfo = timing.resolve_timezone(zone, None, None, config.schedule.default_timezone)
    return timing.next_allowed_moment(
        at, tz, config.schedule.quiet_hours, config.schedule.send_days
    )
