"""The scheduler as the scheduler process runs it: due sends and reminders go to this queue's
actors (``send_survey``, ``send_reminder``), which the workers run."""

from __future__ import annotations

from dispatch.scheduler import Scheduler
from wiring.runtime import Runtime
from wiring.services import scheduler
from worker.actors import send_reminder, send_survey


def build_scheduler(runtime: Runtime) -> Scheduler:
    return scheduler(runtime, enqueue_send=send_survey.send, enqueue_reminder=send_reminder.send)
