"""The scheduler: the database is the schedule; this turns due rows into queue messages.

Each pass (`nps-dispatch tick`, or every few seconds under `nps-dispatch scheduler`):

- surveys planned under an older config version are planned again (a changed delay reaches every
  survey not yet queued; queued and sent ones are untouched);
- surveys whose anchor never came get anchored on purchase + ``anchor_timeout``;
- due surveys are claimed in batches (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so any number of
  schedulers share the work without taking the same row), re-checked (cancellation, consent,
  quiet hours *now*), moved to ``queued`` and committed, and only then enqueued;
- ``queued`` rows older than ``stuck_after`` are enqueued again: a message lost by the broker,
  or a scheduler killed between its commit and its enqueue. A duplicate is harmless because the
  worker claims ``queued -> sending`` before sending;
- due reminders are enqueued (each claimed by its count, so at most one per reminder);
- invitations whose response window has closed end as ``no_response``, and answered ones still
  waiting for their follow-up as ``partial``: past its window every survey is in a final state;
- provider webhooks that were stored but failed while being applied are applied again (each
  after its back-off);
- raw webhook payloads older than the retention period are emptied (personal data);
- sends left in ``sending`` past a timeout are settled from the provider (never re-sent). This
  is the one step that calls a provider, so it runs last: a slow provider cannot hold up the
  others, and a replayed status callback may already have settled a send.

Every step runs on its own: one that raises is logged (ids, the exception's type and a masked
message, never the SQL parameters a database error quotes), counted in
:attr:`TickReport.failures` and in ``nps_scheduler_step_failures_total{step=...}``, and the pass
goes on with the next step. Settling is isolated per survey as well, so one send the provider
cannot answer for does not leave the others stuck.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import unquote

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from channels.masking import mask_text
from config import OperatorConfig
from dispatch import planning, timing
from dispatch.consent import withdraw_if_stopped
from dispatch.tick_report import STEP_FAILURES, STEPS, TickReport
from models import Customer, InboundEvent, Order, Survey, SurveyState, current_consent, move, utcnow
from models.lifecycle import AWAITING_FOLLOWUP_STATES, OPEN_STATES

log = logging.getLogger(__name__)
S = SurveyState

# What a database error appends after its message quotes row values and bound parameters.
_QUOTES_DATA = re.compile(
    r"\[SQL: |\[parameters: |\[SQL parameters hidden|\(Background on this error|\bDETAIL: "
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, fit for a log line or an error column: cut before the SQL
    statement, bound parameters or DETAIL a database error carries (they quote row values), with
    percent-encoded text decoded so that :func:`~channels.masking.mask_text` masks every phone
    number and email address, including those in a request URL a provider error repeats."""
    text = str(exc)
    found = _QUOTES_DATA.search(text)
    if found is not None:
        text = text[: found.start()]
    text = " ".join(unquote(_ANSI.sub("", text)).split())
    name = type(exc).__name__
    return f"{name}: {mask_text(text)}"[:limit] if text else name


def _origin(exc: BaseException) -> str:
    """Where the exception was raised (file, line, function): no data, only code."""
    tb = exc.__traceback__
    if tb is None:
        return "unknown place"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name}"


class Scheduler:
    def __init__(
        self,
        factory: sessionmaker[Session],
        enqueue: Callable[[int], object],
        *,
        enqueue_reminder: Callable[[int, int], object] | None = None,
        settle: Callable[[int, datetime], object] | None = None,
        replay_webhooks: Callable[[datetime], object] | None = None,
        batch_size: int = 500,
        stuck_after: timedelta = timedelta(minutes=10),
        sending_timeout: timedelta = timedelta(minutes=2),
        payload_retention: timedelta = timedelta(days=30),
    ) -> None:
        self.factory = factory
        self.enqueue = enqueue
        self.enqueue_reminder = enqueue_reminder
        self.settle = settle
        self.replay_webhooks = replay_webhooks
        self.batch_size = batch_size
        self.stuck_after = stuck_after
        self.sending_timeout = sending_timeout
        self.payload_retention = payload_retention

    def tick(self, config: OperatorConfig, now: datetime | None = None) -> TickReport:
        now = now or utcnow()
        report = TickReport()
        steps: dict[str, Callable[[], object]] = {
            "replan": lambda: self._replan_stale(config, now, report),
            "anchor_timeouts": lambda: self._anchor_timeouts(config, now, report),
            "claim_due": lambda: self._claim_due(config, now, report),
            "requeue_stuck": lambda: self._requeue_stuck(now, report),
            "reminders": lambda: self._due_reminders(now, report),
            "close_windows": lambda: self._close_windows(now, report),
            "replay_webhooks": lambda: self._replay_webhooks(now),
            "prune_payloads": lambda: self._prune_raw_payloads(now, report),
            "settle": lambda: self._reconcile_sending(now, report),
        }
        for name in STEPS:
            try:
                steps[name]()
            except Exception as exc:  # isolated: the next steps still run
                self._failed(report, name)
                log.error(
                    "scheduler step %s failed at %s; the pass goes on: %s",
                    name,
                    _origin(exc),
                    describe_error(exc),
                )
        return report

    @staticmethod
    def _failed(report: TickReport, step: str, n: int = 1) -> None:
        report.failures[step] = report.failures.get(step, 0) + n
        STEP_FAILURES.labels(step=step).inc(n)

    def _claim_due(self, config: OperatorConfig, now: datetime, report: TickReport) -> None:
        while self._claim_due_batch(config, now, report) == self.batch_size:
            pass

    def _replay_webhooks(self, now: datetime) -> None:
        """Webhooks stored but not applied (a failure mid-apply) are applied again."""
        if self.replay_webhooks is not None:
            self.replay_webhooks(now)

    def _replan_stale(self, config: OperatorConfig, now: datetime, report: TickReport) -> None:
        """Surveys planned under another config version and not yet queued are planned again,
        so an operator's edit of the delay reaches every survey not yet sent."""
        with self.factory() as session, session.begin():
            rows = session.scalars(
                select(Survey)
                .where(
                    Survey.state.in_([S.waiting_anchor.value, S.scheduled.value]),
                    Survey.config_version != config.version,
                )
                .limit(self.batch_size * 4)
                .with_for_update(skip_locked=True)
            ).all()
            for survey in rows:
                planning.replan(session, survey, config, now)
                report.replanned += 1

    def _anchor_timeouts(self, config: OperatorConfig, now: datetime, report: TickReport) -> None:
        with self.factory() as session, session.begin():
            rows = session.scalars(
                select(Survey)
                .where(Survey.state == S.waiting_anchor, Survey.due_at <= now)
                .order_by(Survey.due_at)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            for survey in rows:
                planning.replan(session, survey, config, now)
                report.anchored += 1

    def _claim_due_batch(self, config: OperatorConfig, now: datetime, report: TickReport) -> int:
        to_enqueue: list[int] = []
        with self.factory() as session, session.begin():
            rows = session.execute(
                select(Survey, Order, Customer)
                .join(Order, Order.id == Survey.order_id)
                .join(Customer, Customer.id == Survey.customer_id)
                .where(Survey.state == S.scheduled, Survey.due_at <= now)
                .order_by(Survey.due_at)
                .limit(self.batch_size)
                .with_for_update(of=Survey, skip_locked=True)
            ).all()
            for survey, order, customer in rows:
                if withdraw_if_stopped(
                    session, survey, order, customer, only_from=S.scheduled, now=now
                ):
                    report.stopped += 1
                    continue
                if not current_consent(session, customer.id, survey.channel):
                    planning.on_consent_revoked(session, customer, survey.channel, config, now)
                    report.stopped += 1
                    continue
                tz = timing.resolve_timezone(
                    survey.timezone, None, None, config.schedule.default_timezone
                )
                allowed = timing.next_allowed_moment(
                    now, tz, config.schedule.quiet_hours, config.schedule.send_days
                )
                if allowed > now:
                    # Due while the scheduler was down, and now it is night there: wait.
                    move(
                        session,
                        survey.id,
                        S.scheduled,
                        reason="quiet hours at claim time",
                        only_from=[S.scheduled],
                        now=now,
                        due_at=allowed,
                    )
                    report.deferred += 1
                    continue
                if move(
                    session, survey.id, S.queued, only_from=[S.scheduled], now=now, queued_at=now
                ):
                    to_enqueue.append(survey.id)
        # Enqueue only after the commit: a crash in between leaves `queued` rows that
        # _requeue_stuck finds; the reverse order could send a survey still marked scheduled.
        for survey_id in to_enqueue:
            self.enqueue(survey_id)
        report.queued += len(to_enqueue)
        report.enqueued.extend(to_enqueue)
        return len(rows)

    def _requeue_stuck(self, now: datetime, report: TickReport) -> None:
        cutoff = now - self.stuck_after
        with self.factory() as session, session.begin():
            ids = list(
                session.scalars(
                    select(Survey.id)
                    .where(Survey.state == S.queued, Survey.queued_at < cutoff)
                    .limit(self.batch_size)
                    .with_for_update(skip_locked=True)
                )
            )
            if ids:
                session.execute(
                    update(Survey)
                    .where(Survey.id.in_(ids), Survey.state == S.queued)
                    .values(queued_at=now)
                    .execution_options(synchronize_session=False)
                )
        for survey_id in ids:
            log.warning(
                "survey %s was queued for over %s: enqueued again", survey_id, self.stuck_after
            )
            self.enqueue(survey_id)
        report.requeued += len(ids)
        report.enqueued.extend(ids)

    def _reconcile_sending(self, now: datetime, report: TickReport) -> None:
        """Sends left in ``sending`` past the timeout: a worker died, or the provider's answer was
        lost. The settle hook resolves each one without ever sending again."""
        if self.settle is None:
            return
        with self.factory() as session:
            ids = list(
                session.scalars(
                    select(Survey.id)
                    .where(
                        Survey.state == S.sending,
                        or_(
                            Survey.sending_at < now - self.sending_timeout,
                            # Claimed but never marked as being sent: a worker that stopped
                            # between its claim and its provider call, or a claim made by an
                            # older worker before its rate-limit wait. A live worker claims and
                            # marks in one transaction, after its wait, so none is taken back.
                            and_(
                                Survey.sending_at.is_(None),
                                Survey.state_changed_at < now - self.sending_timeout,
                            ),
                        ),
                    )
                    .order_by(Survey.state_changed_at)
                    .limit(self.batch_size)
                )
            )
        failed: list[int] = []
        first_error = ""
        for survey_id in ids:
            try:
                self.settle(survey_id, now)
            except Exception as exc:  # one survey's failure must not leave the others stuck
                if not failed:
                    first_error = f"{describe_error(exc)} at {_origin(exc)}"
                failed.append(survey_id)
            else:
                report.settled += 1
        if failed:
            self._failed(report, "settle", len(failed))
            # One line per pass, not one per survey: a provider outage fails them all.
            log.error(
                "settling %s of %s stuck sends failed (surveys %s%s); first: %s",
                len(failed),
                len(ids),
                ", ".join(map(str, failed[:20])),
                ", ..." if len(failed) > 20 else "",
                first_error,
            )

    def _due_reminders(self, now: datetime, report: TickReport) -> None:
        """Enqueue due reminders. The row's next_reminder_at is leased forward while the message
        is on its way; the reminder itself is claimed by its count, so a copy sends nothing."""
        if self.enqueue_reminder is None:
            return
        with self.factory() as session, session.begin():
            rows = session.execute(
                select(Survey.id, Survey.reminders_sent)
                .where(
                    Survey.state.in_([s.value for s in OPEN_STATES]),
                    Survey.next_reminder_at <= now,
                )
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            if rows:
                session.execute(
                    update(Survey)
                    .where(Survey.id.in_([r[0] for r in rows]))
                    .values(next_reminder_at=now + self.stuck_after)
                    .execution_options(synchronize_session=False)
                )
        for survey_id, sent in rows:
            self.enqueue_reminder(survey_id, sent)
        report.reminders += len(rows)

    def _prune_raw_payloads(self, now: datetime, report: TickReport) -> None:
        """Raw webhook payloads hold phone numbers and addresses: they are kept for
        ``payload_retention`` (to debug and replay) and then emptied, applied or not (a webhook
        that never applied was given up long before; its error stays); the ledger row stays, so
        a late duplicate is still recognised."""
        cutoff = now - self.payload_retention
        with self.factory() as session, session.begin():
            ids = (
                select(InboundEvent.id)
                .where(
                    InboundEvent.payload.is_not(None),
                    InboundEvent.received_at < cutoff,
                )
                .limit(self.batch_size * 10)
            )
            pruned = session.execute(
                update(InboundEvent)
                .where(InboundEvent.id.in_(ids.scalar_subquery()))
                .values(payload=None)
                .returning(InboundEvent.id)
                .execution_options(synchronize_session=False)
            ).all()
        report.pruned += len(pruned)

    def _close_windows(self, now: datetime, report: TickReport) -> None:
        """Past its response window every survey ends in a final state: an invitation without
        a score as ``no_response``, a score without its follow-up as ``partial``."""
        limit = self.batch_size * 10
        while self._close_window_batch(now, report, limit) == limit:
            pass

    def _close_window_batch(self, now: datetime, report: TickReport, limit: int) -> int:
        closing = OPEN_STATES | AWAITING_FOLLOWUP_STATES
        with self.factory() as session, session.begin():
            ids = list(
                session.scalars(
                    select(Survey.id)
                    .where(Survey.state.in_([s.value for s in closing]), Survey.closes_at <= now)
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
