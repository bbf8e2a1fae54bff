"""The report of a filtered view (period, channel, category): the JSON of
``reports/REPORT_JSON.md`` for the purchases of one :class:`reports.filters.FilteredPeriod`.

Without a channel or category this is :func:`reports.build.build_report` itself. With one, the
report's own assembly (``reports.build._build``) runs over the filtered period: every query it
makes filters on ``period.condition()``, which :class:`~reports.filters.FilteredPeriod` extends
with the channel and category, so the figures are the report's, computed the same way for the
filtered purchases. The report then gains a ``filters`` key ``{channel, category}``. The
comparison, when asked for, is the previous period of the same length, or the one given, under
the same filters. ``tests/web/test_dashboard.py`` checks a filtered view against the report's
segment of the same channel or category.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from reports import build
from reports.filters import FilteredPeriod
from reports.params import ReportError


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
        return build.build_report(
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
            build.tune_session(session)
        try:
            report = build._build(session, config, view, by, other, now)
        finally:
            session.rollback()
    report["filters"] = view.filters()
    return report


def _previous(view: FilteredPeriod) -> FilteredPeriod | None:
    if view.since is None or view.until is None:
        return None
    length = view.until - view.since
    return view.with_dates(view.since - length, view.since)
