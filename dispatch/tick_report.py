"""What one scheduler pass did: its steps, their counts and failures, and the failure counter
every process exposes (``nps_scheduler_step_failures_total{step=...}``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from prometheus_client import Counter

STEPS: Final = (
    "replan",
    "anchor_timeouts",
    "claim_due",
    "requeue_stuck",
    "reminders",
    "close_windows",
    "replay_webhooks",
    "prune_payloads",
    "alerts",
    "settle",
)
"""The steps of a pass, in the order they run; the ``step`` label of the failure counter."""

STEP_FAILURES: Final = Counter(
    "nps_scheduler_step_failures",
    "Scheduler steps that raised (for settle: surveys whose settling raised), by step",
    ["step"],
)
for _step in STEPS:
    STEP_FAILURES.labels(step=_step)  # every step is exposed, at zero until it fails


@dataclass
class TickReport:
    replanned: int = 0
    anchored: int = 0
    queued: int = 0
    deferred: int = 0
    stopped: int = 0
    requeued: int = 0
    closed: int = 0  # windows closed: no_response and partial together
    partials: int = 0  # of which answered surveys that ended partial
    settled: int = 0
    reminders: int = 0
    pruned: int = 0
    alerts: int = 0  # detractor alerts handed to the queue
    enqueued: list[int] = field(default_factory=list)
    # Failures by step name (see STEPS); for settle, one per survey whose settling raised.
    failures: dict[str, int] = field(default_factory=dict)

    def total(self) -> int:
        return (
            self.replanned
            + self.anchored
            + self.queued
            + self.deferred
            + self.stopped
            + self.requeued
            + self.closed
        )
