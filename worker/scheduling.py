"""The scheduler process: the scheduler wired to this queue's actors (due sends and reminders
go to ``send_survey`` and ``send_reminder``, which the workers run) and its loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from config import OperatorConfig
from dispatch.scheduler import Scheduler
from dispatch.tick_report import TickReport
from wiring.runtime import Runtime
from wiring.services import scheduler
from worker.actors import send_reminder, send_survey

log = logging.getLogger(__name__)


def build_scheduler(runtime: Runtime) -> Scheduler:
    return scheduler(runtime, enqueue_send=send_survey.send, enqueue_reminder=send_reminder.send)


def run_forever(
    scheduler: Scheduler,
    config_source: Callable[[], OperatorConfig],
    interval_seconds: float = 5.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """The `nps-dispatch scheduler` loop: a pass, then a pause unless the pass was busy."""
    while not should_stop():
        try:
            report = scheduler.tick(config_source())
        except Exception:
            log.exception("scheduler pass failed; retrying")
            report = TickReport()
        if report.total() == 0:
            time.sleep(interval_seconds)
