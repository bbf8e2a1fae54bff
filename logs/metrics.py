"""The Prometheus metrics every process counts: one definition of each, shared by the web app,
the workers and the scheduler.

Each process increments these in its own memory; when ``PROMETHEUS_MULTIPROC_DIR`` is set (as
the Procfile's processes do), prometheus_client keeps them in files of that directory instead, so
that one scrape sums every process of a host (the dramatiq worker forks several). Labels carry
names of things (a channel, an outcome, an event type), never data about a person.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Histogram

EVENTS: Final = Counter(
    "nps_events",
    "Shop events received, by type and outcome (accepted, duplicate, rejected, failed)",
    ["type", "outcome"],
)
SENDS: Final = Counter(
    "nps_sends",
    "Invitations and reminders handed to a provider, by channel and outcome "
    "(sent, transient, permanent, unknown, withdrawn, unbuilt)",
    ["channel", "outcome"],
)
SEND_LATENCY: Final = Histogram(
    "nps_send_latency_seconds",
    "Time of one provider call to send a message, by channel",
    ["channel"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
WEBHOOK_VERIFICATION_FAILURES: Final = Counter(
    "nps_webhook_verification_failures",
    "Webhook requests refused because their signature did not verify, by source",
    ["source"],
)
RATE_LIMITED: Final = Counter(
    "nps_rate_limited_requests",
    "Requests refused with 429 by the per-client rate limit, by route group",
    ["group"],
)
SCHEDULER_LATENESS: Final = Histogram(
    "nps_scheduler_lateness_seconds",
    "From a survey's due time to its enqueue by the scheduler",
    buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)
DETRACTOR_ALERTS: Final = Counter(
    "nps_detractor_alerts",
    "Detractor alert attempts by target (webhook, email) and outcome "
    "(delivered, retry, failed, cancelled)",
    ["target", "outcome"],
)
