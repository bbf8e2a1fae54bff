"""The report of a filtered view (period, channel, category): the JSON of
``reports/REPORT_JSON.md`` for the purchases of one :class:`reports.filters.FilteredPeriod`.

Without a channel or category this is :func:`reports.build.build_report` itself. With one, the
same steps run over the filtered population (the same queries, tallies and statistics, taken from
:mod:`reports.build`, :mod:`reports.query` and :mod:`reports.tally`), and the report gains a
``filters`` key ``{channel, category}``; ``tests/web/test_dashboard.py`` checks that the two
paths agree on an unfiltered view. The comparison, when asked for, is the previous period of the
same length under the same filters.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from reports.build import (
    REPORT_VERSION,
    adjust,
    adjusted_entry,
    bands_of,
    build_report,
    segment_entry,
    timing_of,
)
from reports.covariates_query import fetch_covariates
from reports.filters import FilteredPeriod
from reports.params import ReportError
from reports.query import count_purchases, skip_reasons, survey_grid
from reports.stats.nps import compare_nps
from reports.tally import coverage_of, group_tallies, headline, tally


def build_view_report(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    view: FilteredPeriod,
    by: str | None = None,
    *,
    compare: bool = True,
    compare_since: date | None = None,
    compare_until: date | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report of ``view`` segmented by ``by`` (already validated); the comparison as in
    :func:`reports.build.build_report`, under the view's filters."""
    now = now or datetime.now(UTC)
    if not view.filtered:
        return build_report(
            factory,
            config,
            view.since,
            view.until,
            by,
            compare=compare,
            compare_since=compare_since,
            compare_until=compare_until,
            now=now,
        )
    other: FilteredPeriod | None = None
    if compare and (compare_since is not None or compare_until is not None):
        try:
            other = view.with_dates(compare_since, compare_until)
        except ValueError as exc:
            raise ReportError(f"compare period: {exc}") from None
    elif compare:
        other = _previous(view)
    with factory() as session:
        if session.get_bind().dialect.name == "postgresql":
            # One snapshot for every query, so that the funnel adds up under concurrent writes.
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        try:
            return _build(session, config, view, by, other, now)
        finally:
            session.rollback()


def _previous(view: FilteredPeriod) -> FilteredPeriod | None:
    if view.since is None or view.until is None:
        return None
    length = view.until - view.since
    return view.with_dates(view.since - length, view.since)


def _build(
    session: Session,
    config: OperatorConfig,
    view: FilteredPeriod,
    by: str | None,
    other: FilteredPeriod | None,
    now: datetime,
) -> dict[str, Any]:
    bands = bands_of(config)
    keys: tuple[str, ...] = ("arm", "delay")
    if by is not None and by not in keys:
        keys = (*keys, by)
    grid = survey_grid(session, view, keys, bands, now)
    overall = tally(grid)
    purchases = count_purchases(session, view)
    table = fetch_covariates(session, view, now, by)
    estimate = overall.nps()
    adjusted = adjust(table, bands)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "as_of": now.astimezone(UTC).isoformat(timespec="seconds"),
        "period": view.to_dict(),
        "filters": view.filters(),
        "by": by,
        "bands": {
            "detractor": list(bands.detractor),
            "passive": list(bands.passive),
            "promoter": list(bands.promoter),
        },
        "n_purchases": purchases,
        **headline(overall),
    }
    report["adjusted"] = adjusted_entry(adjusted, estimate)
    report["bounds"] = None if adjusted.bounds is None else adjusted.bounds.to_dict()
    report["coverage"] = coverage_of(overall, purchases, skip_reasons(session, view))
    segments: list[dict[str, Any]] = []
    if by is not None and table.segment is not None:
        for key, t in group_tallies(grid, keys.index(by)).items():
            segments.append(segment_entry(key, t, adjust(table, bands, table.segment == key)))
    report["segments"] = segments
    report["timing"] = timing_of(grid, [arm.name for arm in config.schedule.arms])
    report["compare"] = None
    if other is not None:
        previous = tally(survey_grid(session, other, (), bands, now))
        report["compare"] = {
            "period": other.to_dict(),
            **headline(previous),
            "difference": compare_nps(previous.nps(), estimate).to_dict(),
        }
    return report
