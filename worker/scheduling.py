"""The scheduler process: the scheduler wired to this queue's actors (due sends and reminders
go to ``send_survey`` and ``send_reminder``, which the workers run; due sends in one Redis round
trip per batch, see :mod:`worker.enqueue`) and its loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from config import OperatorConfig
from dispatch.scheduler import Scheduler
from dispatch.tick_report import TickReport
from models import utcnow
from wiring.runtime import Runtime
from wiring.services import scheduler
from worker.actors import send_reminder, send_survey
from worker.alerting import deliver_detractor_alert
from worker.enqueue import batch_sender

log = logging.getLogger(__name__)

#: The shortest pause of an idle loop, when a due survey is held by another scheduler.
MIN_PAUSE_SECONDS = 0.1


def build_scheduler(runtime: Runtime) -> Scheduler:
    built = scheduler(runtime, enqueue_send=send_survey.send, enqueue_reminder=send_reminder.send)
    built.enqueue_many = batch_sender(send_survey)
    built.enqueue_alert = deliver_detractor_alert.send
    return built


def pause_after(
    report: TickReport,
    next_due: datetime | None,
    now: datetime,
    interval_seconds: float,
) -> float:
    """Seconds to wait before the next pass: none after a busy pass; else until the next
    survey is due, at most ``interval_seconds`` (the other steps wait for that long)."""
    if report.total() > 0:
        return 0.0
    if next_due is None:
        return interval_seconds
    until = (next_due - now).total_seconds()
    return min(interval_seconds, max(MIN_PAUSE_SECONDS, until))


def run_forever(
    scheduler: Scheduler,
    config_source: Callable[[], OperatorConfig],
    interval_seconds: float = 5.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """The `nps-dispatch scheduler` loop: a pass, then a pause unless the pass was busy; an idle
    loop wakes when the next survey is due, so that it is enqueued on time."""
    while not should_stop():
        next_due: datetime | None = None
        try:
            report = scheduler.tick(config_source())
            if report.total() == 0:
                next_due = scheduler.next_due()
        except Exception:
            log.exception("scheduler pass failed; retrying")
            report = TickReport()
        pause = pause_after(report, next_due, utcnow(), interval_seconds)
        if pause > 0:
            time.sleep(pause)
