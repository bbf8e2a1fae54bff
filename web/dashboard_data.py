"""The dashboard's figures for one view, through the per-process report cache.

A page load reads the data version (one cheap statement), then takes from the cache, or
computes once: the report segmented as asked, the report by purchase week (the trend chart's
raw and adjusted NPS), and the histogram, the response rate per channel and the categories. The
comments are read live, a page at a time. ``GET /v1/reports/nps`` shares the same cache.
"""

from __future__ import annotations

import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from reports.cache import ReportCache, data_version
from reports.comments import CommentPage, comment_page
from reports.filters import FilteredPeriod
from web.dashboard_charts import WeekPoint
from web.dashboard_params import DashboardQuery
from wiring.runtime import Runtime

# A page may show figures up to this old while newer ones are computed behind it (the page
# says so); the report API always answers with figures of the current data.
STALE_FOR = 600.0
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dashboard")
_caches: weakref.WeakKeyDictionary[Engine, ReportCache[Any]] = weakref.WeakKeyDictionary()


def cache_for(runtime: Runtime) -> ReportCache[Any]:
    """This process's cache for the runtime's database."""
    cache = _caches.get(runtime.engine)
    if cache is None:
        cache = _caches.setdefault(runtime.engine, ReportCache(stale_for=STALE_FOR))
    return cache


def current_version(runtime: Runtime) -> tuple[Any, ...]:
    with runtime.factory() as session:
        return (runtime.config.version, *data_version(session))


def _view_key(view: FilteredPeriod) -> tuple[Any, ...]:
    return (view.since, view.until, view.channel, view.category)


def cached_report(
    runtime: Runtime,
    view: FilteredPeriod,
    by: str | None,
    now: datetime,
    *,
    compare: bool = True,
    version: tuple[Any, ...] | None = None,
    allow_stale: bool = False,
) -> dict[str, Any]:
    """The report of ``view``, from the cache while the data has not changed (with
    ``allow_stale``, also a recent one while the current one is computed)."""
    from reports.filtered import build_view_report

    version = version or current_version(runtime)
    report: dict[str, Any] = cache_for(runtime).get_or_compute(
        _report_key(view, by, compare),
        version,
        lambda: build_view_report(
            runtime.factory, runtime.config, view, by, compare=compare, now=now
        ),
        allow_stale=allow_stale,
    )
    return report


def _report_key(view: FilteredPeriod, by: str | None, compare: bool) -> tuple[Any, ...]:
    return ("report", *_view_key(view), by, compare)


@dataclass(frozen=True, slots=True)
class Extras:
    histogram: list[int]
    by_channel: list[dict[str, Any]]
    categories: list[str]


def load_extras(runtime: Runtime, view: FilteredPeriod, now: datetime) -> Extras:
    from reports.series import categories, response_by_channel, score_histogram

    with runtime.factory() as session:
        return Extras(
            score_histogram(session, view),
            response_by_channel(session, view, now),
            categories(session, view),
        )


@dataclass(frozen=True, slots=True)
class Figures:
    report: dict[str, Any]
    weeks: list[WeekPoint]
    extras: Extras
    updating: bool = False


def week_points(weekly: dict[str, Any]) -> list[WeekPoint]:
    out: list[WeekPoint] = []
    for seg in weekly.get("segments", []):
        ci = seg.get("nps_ci95")
        adjusted = seg.get("adjusted") or {}
        out.append(
            WeekPoint(
                label=str(seg["key"]).split("-", 1)[-1],
                nps=seg.get("nps"),
                ci95=(ci[0], ci[1]) if ci and None not in ci else None,
                adjusted=adjusted.get("nps"),
                n=int(seg.get("counts", {}).get("n", 0)),
            )
        )
    return out


def load_figures(runtime: Runtime, query: DashboardQuery, now: datetime) -> Figures:
    """The view's figures; on a cold cache the weekly report and the extras are computed in
    other threads while this one builds the main report (the database works on each query in
    its own process, and numpy releases the interpreter while it fits). Figures of older data
    are shown while newer ones are computed (``Figures.updating``)."""
    version = current_version(runtime)
    view = query.view
    cache = cache_for(runtime)
    extras_key = ("extras", *_view_key(view))
    extras = _POOL.submit(
        cache.get_or_compute,
        extras_key,
        version,
        lambda: load_extras(runtime, view, now),
        allow_stale=True,
    )
    weekly = None
    if query.by != "week":
        weekly = _POOL.submit(
            cached_report,
            runtime,
            view,
            "week",
            now,
            compare=False,
            version=version,
            allow_stale=True,
        )
    report = cached_report(runtime, view, query.by, now, version=version, allow_stale=True)
    keys = (_report_key(view, query.by, True), _report_key(view, "week", False), extras_key)
    return Figures(
        report,
        week_points(report if weekly is None else weekly.result()),
        extras.result(),
        updating=any(cache.refreshing(key) for key in keys),
    )


def load_comments(runtime: Runtime, query: DashboardQuery) -> CommentPage:
    from reports.build import bands_of

    with runtime.factory() as session:
        return comment_page(
            session,
            query.view,
            bands_of(runtime.config),
            band=query.band,
            query=query.q,
            page=query.page,
        )
