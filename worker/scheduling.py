"""The scheduler as the scheduler process runs it: due sends and reminders go to this queue's
actors (``send_survey``, ``send_reminder``), which the workers run."""

from __future__ import annotations

from worker.actors import send_reminder, send_survey
from worker.runtime import Runtime
from worker.scheduler import Scheduler
from worker.wiring import scheduler


def build_scheduler(runtime: Runtime) -> Scheduler:
    return scheduler(runtime, enqueue_send=send_survey.send, enqueue_reminder=send_reminder.send)
