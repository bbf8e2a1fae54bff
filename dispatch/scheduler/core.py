"""The :class:`Scheduler`: its hooks, its settings, and one pass over every step in order, each
isolated from the others' failures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from dispatch.alerts import enqueue_due_alerts
from dispatch.scheduler.claim import claim_batch
from dispatch.scheduler.errors import describe_error, log, origin
from dispatch.scheduler.replan import anchor_timeouts, replan_stale
from dispatch.scheduler.upkeep import (
    close_windows,
    due_reminders,
    failed,
    prune_raw_payloads,
    reconcile_sending,
    requeue_stuck,
)
from dispatch.tick_report import STEPS, TickReport
from models import Survey, SurveyState, utcnow
from models.surveys import in_states


class Scheduler:
    """One scheduler: ``tick`` runs a pass. ``enqueue`` takes one survey id;
    ``enqueue_many``, when given, takes a batch in one broker round trip (else ``enqueue`` is
    called for each)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        enqueue: Callable[[int], object],
        *,
        enqueue_many: Callable[[Sequence[int]], object] | None = None,
        enqueue_reminder: Callable[[int, int], object] | None = None,
        settle: Callable[[int, datetime], object] | None = None,
        replay_webhooks: Callable[[datetime], object] | None = None,
        enqueue_alert: Callable[[int], object] | None = None,
        batch_size: int = 500,
        stuck_after: timedelta = timedelta(minutes=10),
        sending_timeout: timedelta = timedelta(minutes=2),
        payload_retention: timedelta = timedelta(days=30),
    ) -> None:
        self.factory = factory
        self.enqueue = enqueue
        self.enqueue_many = enqueue_many
        self.enqueue_reminder = enqueue_reminder
        self.settle = settle
        self.replay_webhooks = replay_webhooks
        self.enqueue_alert = enqueue_alert
        self.batch_size = batch_size
        self.stuck_after = stuck_after
        self.sending_timeout = sending_timeout
        self.payload_retention = payload_retention

    def tick(self, config: OperatorConfig, now: datetime | None = None) -> TickReport:
        """One pass. Given ``now``, every step takes it as the time; without it, each claimed
        batch reads the clock when it is claimed, so that its ``queued_at`` and transition time
        are the moment of its enqueue, not the start of the pass."""
        clock: Callable[[], datetime] = utcnow if now is None else (lambda: now)
        start = clock()
        report = TickReport()
        size = self.batch_size
        steps: dict[str, Callable[[], object]] = {
            "replan": lambda: replan_stale(self.factory, config, start, size * 4, report),
            "anchor_timeouts": lambda: anchor_timeouts(self.factory, config, start, size, report),
            "claim_due": lambda: self._claim_due(config, clock, report),
            "requeue_stuck": lambda: requeue_stuck(
                self.factory, start, self.stuck_after, size, self._send_many, report
            ),
            "reminders": lambda: self._due_reminders(start, report),
            "close_windows": lambda: close_windows(self.factory, start, size * 10, report),
            "replay_webhooks": lambda: self._replay_webhooks(start),
            "prune_payloads": lambda: prune_raw_payloads(
                self.factory, start, self.payload_retention, size * 10, report
            ),
            "alerts": lambda: self._alerts(start, report),
            "settle": lambda: self._reconcile_sending(start, report),
        }
        for name in STEPS:
            try:
                steps[name]()
            except Exception as exc:  # isolated: the next steps still run
                failed(report, name)
                log.error(
                    "scheduler step %s failed at %s; the pass goes on: %s",
                    name,
                    origin(exc),
                    describe_error(exc),
                )
        return report

    def next_due(self) -> datetime | None:
        """The earliest due time of a ``scheduled`` survey (one index probe), so that a loop
        with nothing to do can sleep until then rather than a fixed interval."""
        with self.factory() as session:
            found: datetime | None = session.scalar(
                select(func.min(Survey.due_at)).where(in_states(SurveyState.scheduled))
            )
        return found

    def _send_many(self, ids: Sequence[int]) -> None:
        if self.enqueue_many is not None:
            self.enqueue_many(ids)
            return
        for survey_id in ids:
            self.enqueue(survey_id)

    def _claim_due(
        self, config: OperatorConfig, clock: Callable[[], datetime], report: TickReport
    ) -> None:
        size = self.batch_size
        while claim_batch(self.factory, config, clock, self._send_many, size, report) == size:
            pass

    def _due_reminders(self, now: datetime, report: TickReport) -> None:
        if self.enqueue_reminder is not None:
            due_reminders(
                self.factory, now, self.stuck_after, self.batch_size, self.enqueue_reminder, report
            )

    def _replay_webhooks(self, now: datetime) -> None:
        """Webhooks stored but not applied (a failure mid-apply) are applied again."""
        if self.replay_webhooks is not None:
            self.replay_webhooks(now)

    def _alerts(self, now: datetime, report: TickReport) -> None:
        """Due detractor alerts go to the queue (:mod:`dispatch.alerts`)."""
        if self.enqueue_alert is not None:
            report.alerts += enqueue_due_alerts(
                self.factory, now, self.enqueue_alert, self.batch_size
            )

    def _reconcile_sending(self, now: datetime, report: TickReport) -> None:
        if self.settle is not None:
            reconcile_sending(
                self.factory, now, self.sending_timeout, self.batch_size, self.settle, report
            )
