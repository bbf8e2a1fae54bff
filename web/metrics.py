"""`GET /metrics`: the counters of every process of the host, and gauges read from the
database at scrape time.

The counters (:mod:`logs.metrics`) are summed over ``PROMETHEUS_MULTIPROC_DIR`` when it is set
(:mod:`logs.exposition`), so every web process, worker and scheduler of the host is counted
whichever web copy answers. The gauges come from the database, the one place every process
writes to, so they are the same on every host. ``nps_build_info`` and ``nps_config_info`` carry
the running code's and the operator config's versions as labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from importlib import metadata

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dispatch.responses import REPLAY_MAX_ATTEMPTS, given_up_webhooks
from logs.exposition import metrics_registry
from models import DeadLetter, InboundEvent, SkippedPurchase, Survey, SurveyState, utcnow

DISTRIBUTION = "nps-dispatch"


def build_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


class VersionCollector(Collector):
    """``nps_build_info{version}`` and ``nps_config_info{version}`` (the config read live)."""

    def __init__(self, config_version: Callable[[], str]) -> None:
        self.config_version = config_version
        self.version = build_version()

    def collect(self) -> Iterator[Metric]:
        build = InfoMetricFamily("nps_build", "The running code's version")
        build.add_metric([], {"version": self.version})
        config = InfoMetricFamily("nps_config", "The operator config's version (a hash)")
        config.add_metric([], {"version": self.config_version()})
        yield build
        yield config


def app_registry(
    factory: sessionmaker[Session],
    config_version: Callable[[], str],
    multiproc_dir: str | None,
    clock: Callable[[], datetime] = utcnow,
) -> CollectorRegistry:
    """What ``GET /metrics`` serves: the host's counters, the database gauges, the versions."""
    return metrics_registry(
        multiproc_dir, DatabaseCollector(factory, clock), VersionCollector(config_version)
    )


class DatabaseCollector(Collector):
    def __init__(
        self, factory: sessionmaker[Session], clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.factory = factory
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.clock()
        with self.factory() as session:
            # Every state is exposed, at zero when no survey is in it, so that a state a
            # dashboard or an alert refers to never vanishes from the scrape.
            states: dict[str, int] = dict.fromkeys((s.value for s in SurveyState), 0)
            for state, count in session.execute(
                select(Survey.state, func.count()).group_by(Survey.state)
            ):
                states[state] = count
            skips = session.execute(
                select(SkippedPurchase.reason, func.count()).group_by(SkippedPurchase.reason)
            )
            dead = session.scalar(
                select(func.count()).select_from(DeadLetter).where(DeadLetter.replayed_at.is_(None))
            )
            unhandled = session.scalar(
                select(func.count())
                .select_from(InboundEvent)
                .where(InboundEvent.handled_at.is_(None), InboundEvent.source != "shop")
            )
            given_up = given_up_webhooks(session)
            oldest_due = session.scalar(
                select(func.min(Survey.due_at)).where(
                    Survey.state == SurveyState.scheduled.value, Survey.due_at <= now
                )
            )
            surveys = GaugeMetricFamily("nps_surveys", "Surveys by state", labels=["state"])
            for state, count in states.items():
                surveys.add_metric([state], count)
            skipped = GaugeMetricFamily(
                "nps_skipped_purchases", "Purchases without a survey, by reason", labels=["reason"]
            )
            for reason, count in skips:
                skipped.add_metric([reason], count)
        yield surveys
        yield skipped
        yield GaugeMetricFamily(
            "nps_oldest_due_survey_age_seconds",
            "How long the oldest scheduled survey has been due (0 when none is due): the "
            "scheduler's backlog",
            value=max(0.0, (now - oldest_due).total_seconds()) if oldest_due else 0.0,
        )
        yield GaugeMetricFamily(
            "nps_dead_letters", "Dead letters not yet replayed", value=dead or 0
        )
        yield GaugeMetricFamily(
            "nps_unhandled_webhooks", "Stored webhooks not yet applied", value=unhandled or 0
        )
        yield GaugeMetricFamily(
            "nps_webhooks_given_up",
            f"Stored webhooks no longer replayed after {REPLAY_MAX_ATTEMPTS} failed applications "
            "(also counted in nps_unhandled_webhooks)",
            value=given_up,
        )
