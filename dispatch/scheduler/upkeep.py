"""The scheduler's other steps: lost messages queued again, reminders, closing response windows,
stored webhooks applied again, raw payloads emptied, and stuck sends settled.

Each finds its rows through an index on what it waits for (the queued rows' lease, the open
invitations' reminder time and window end, see ``models.surveys``), so its cost follows the rows
it acts on, not the number of surveys stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from dispatch.scheduler.errors import describe_error, log, origin
from dispatch.tick_report import STEP_FAILURES, TickReport
from logs.metrics import SCHEDULER_LATENESS
from models import InboundEvent, Survey, SurveyState, move
from models.lifecycle import AWAITING_FOLLOWUP_STATES, OPEN_STATES
from models.surveys import in_states

S = SurveyState
Factory = sessionmaker[Session]


def failed(report: TickReport, step: str, n: int = 1) -> None:
    report.failures[step] = report.failures.get(step, 0) + n
    STEP_FAILURES.labels(step=step).inc(n)


#: The ``queued_at`` of a ``queued`` row whose message never reached the broker (its enqueue
#: failed): older than any lease, so the next pass's stuck-queue sweep takes it at once.
LEASE_EXPIRED = datetime(2000, 1, 1, tzinfo=UTC)


def expire_leases(factory: Factory, ids: Sequence[int]) -> None:
    """Mark ``queued`` rows whose enqueue failed as :data:`LEASE_EXPIRED`, so the next pass
    enqueues them again instead of waiting out ``stuck_after``. If even this fails (the
    database is gone too), the rows keep their lease and are enqueued once it runs out."""
    try:
        with factory() as session, session.begin():
            session.execute(
                update(Survey)
                .where(Survey.id.in_(list(ids)), Survey.state == S.queued)
                .values(queued_at=LEASE_EXPIRED)
                .execution_options(synchronize_session=False)
            )
    except Exception as exc:
        log.error(
            "%s queued surveys not enqueued, lease kept (enqueued once it runs out): %s",
            len(ids),
            describe_error(exc),
        )


def requeue_stuck(
    factory: Factory,
    now: datetime,
    stuck_after: timedelta,
    limit: int,
    enqueue_many: Callable[[Sequence[int]], object],
    report: TickReport,
) -> None:
    """``queued`` rows older than ``stuck_after`` are enqueued again: a message lost by the
    broker, or a scheduler stopped between its commit and its enqueue. A duplicate is harmless:
    the worker claims ``queued -> sending`` before sending. Rows whose enqueue failed
    (:data:`LEASE_EXPIRED`) are taken first, and their lateness is observed now, as it never
    was; if this enqueue fails too, their leases are expired again for the next pass."""
    cutoff = now - stuck_after
    with factory() as session, session.begin():
        rows = session.execute(
            select(Survey.id, Survey.queued_at, Survey.due_at)
            .where(in_states(S.queued), Survey.queued_at < cutoff)
            .order_by(Survey.queued_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        ids = [row.id for row in rows]
        if ids:
            session.execute(
                update(Survey)
                .where(Survey.id.in_(ids), Survey.state == S.queued)
                .values(queued_at=now)
                .execution_options(synchronize_session=False)
            )
    if ids:
        log.warning(
            "%s surveys were queued for over %s: enqueued again (%s%s)",
            len(ids),
            stuck_after,
            ", ".join(map(str, ids[:20])),
            ", ..." if len(ids) > 20 else "",
        )
        try:
            enqueue_many(ids)
        except Exception:
            expire_leases(factory, ids)
            raise
        for row in rows:
            if row.queued_at == LEASE_EXPIRED and row.due_at is not None:
                SCHEDULER_LATENESS.observe(max(0.0, (now - row.due_at).total_seconds()))
    report.requeued += len(ids)
    report.enqueued.extend(ids)


def due_reminders(
    factory: Factory,
    now: datetime,
    lease: timedelta,
    limit: int,
    enqueue_reminder: Callable[[int, int], object],
    report: TickReport,
) -> None:
    """Enqueue due reminders. The row's next_reminder_at is leased forward while the message
    is on its way; the reminder itself is claimed by its count, so a copy sends nothing."""
    with factory() as session, session.begin():
        rows = session.execute(
            select(Survey.id, Survey.reminders_sent)
            .where(in_states(*OPEN_STATES), Survey.next_reminder_at <= now)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if rows:
            session.execute(
                update(Survey)
                .where(Survey.id.in_([r[0] for r in rows]))
                .values(next_reminder_at=now + lease)
                .execution_options(synchronize_session=False)
            )
    for survey_id, sent in rows:
        enqueue_reminder(survey_id, sent)
    report.reminders += len(rows)


def close_windows(factory: Factory, now: datetime, limit: int, report: TickReport) -> None:
    """Past its response window every survey ends in a final state: an invitation without
    a score as ``no_response``, a score without its follow-up as ``partial``."""
    while _close_window_batch(factory, now, limit, report) == limit:
        pass


def _close_window_batch(factory: Factory, now: datetime, limit: int, report: TickReport) -> int:
    closing = OPEN_STATES | AWAITING_FOLLOWUP_STATES
    with factory() as session, session.begin():
        ids = list(
            session.scalars(
                select(Survey.id)
                .where(in_states(*closing), Survey.closes_at <= now)
                .order_by(Survey.closes_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        unanswered = move(
            session,
            ids,
            S.no_response,
            reason="response window closed",
            only_from=OPEN_STATES,
            now=now,
            final_reason="response window closed",
        )
        partial = move(
            session,
            ids,
            S.partial,
            reason="response window closed before the follow-up",
            only_from=AWAITING_FOLLOWUP_STATES,
            now=now,
            final_reason="response window closed before the follow-up",
        )
    report.closed += len(unanswered) + len(partial)
    report.partials += len(partial)
    # Every selected row was locked by this transaction, so all of them moved; a shortfall
    # would mean rows left behind, and another round would only select them again.
    moved = len(unanswered) + len(partial)
    return len(ids) if moved == len(ids) else 0


def prune_raw_payloads(
    factory: Factory, now: datetime, retention: timedelta, limit: int, report: TickReport
) -> None:
    """Raw webhook payloads hold phone numbers and addresses: they are kept for ``retention``
    (to debug and replay) and then emptied, applied or not (a webhook that never applied was
    given up long before; its error stays); the ledger row stays, so a late duplicate is still
    recognised."""
    cutoff = now - retention
    with factory() as session, session.begin():
        ids = (
            select(InboundEvent.id)
            .where(InboundEvent.payload.is_not(None), InboundEvent.received_at < cutoff)
            .limit(limit)
        )
        pruned = session.execute(
            update(InboundEvent)
            .where(InboundEvent.id.in_(ids.scalar_subquery()))
            .values(payload=None)
            .returning(InboundEvent.id)
            .execution_options(synchronize_session=False)
        ).all()
    report.pruned += len(pruned)


def reconcile_sending(
    factory: Factory,
    now: datetime,
    timeout: timedelta,
    limit: int,
    settle: Callable[[int, datetime], object],
    report: TickReport,
) -> None:
    """Sends left in ``sending`` past the timeout: a worker died, or the provider's answer was
    lost. ``settle`` resolves each one without ever sending again; one that raises does not
    leave the others stuck."""
    with factory() as session:
        ids = list(
            session.scalars(
                select(Survey.id)
                .where(
                    Survey.state == S.sending,
                    or_(
                        Survey.sending_at < now - timeout,
                        # Claimed but never marked as being sent: a worker that stopped
                        # between its claim and its provider call, or a claim made by an
                        # older worker before its rate-limit wait. A live worker claims and
                        # marks in one transaction, after its wait, so none is taken back.
                        and_(
                            Survey.sending_at.is_(None),
                            Survey.state_changed_at < now - timeout,
                        ),
                    ),
                )
                .order_by(Survey.state_changed_at)
                .limit(limit)
            )
        )
    failures: list[int] = []
    first_error = ""
    for survey_id in ids:
        try:
            settle(survey_id, now)
        except Exception as exc:  # one survey's failure must not leave the others stuck
            if not failures:
                first_error = f"{describe_error(exc)} at {origin(exc)}"
            failures.append(survey_id)
        else:
            report.settled += 1
    if failures:
        failed(report, "settle", len(failures))
        # One line per pass, not one per survey: a provider outage fails them all.
        log.error(
            "settling %s of %s stuck sends failed (surveys %s%s); first: %s",
            len(failures),
            len(ids),
            ", ".join(map(str, failures[:20])),
            ", ..." if len(failures) > 20 else "",
            first_error,
        )
