"""`GET /metrics`: Prometheus gauges read from the database at scrape time.

The database is the one place every process writes to, so these numbers are the same whichever
web copy is scraped (per-process counters would need prometheus_client's multiprocess mode).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dispatch.responses import REPLAY_MAX_ATTEMPTS, given_up_webhooks
from models import DeadLetter, InboundEvent, SkippedPurchase, Survey, SurveyState


class DatabaseCollector(Collector):
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
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
