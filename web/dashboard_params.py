"""The dashboard's query parameters, checked: a bad one is a :class:`ReportError` whose message
starts with the parameter's name (``"page: must be a whole number from 1"``), answered 422.

``since`` / ``until`` (``YYYY-MM-DD``, UTC purchase days, until exclusive; default the last 90
days up to today included), ``channel`` (email, sms), ``category``, ``by`` (the segment table,
default ``channel``), and for the comments ``band`` (detractor, passive, promoter), ``q`` (a
search text) and ``page`` (from 1). An empty value is the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

from reports.comments import MAX_QUERY
from reports.filters import FilteredPeriod, make_view, parse_band, parse_category, parse_channel
from reports.params import ReportError, parse_by, parse_date

DEFAULT_DAYS: Final = 90
DEFAULT_BY: Final = "channel"
MAX_PAGE: Final = 10_000
KNOWN: Final = frozenset({"since", "until", "channel", "category", "by", "band", "q", "page"})


@dataclass(frozen=True, slots=True)
class DashboardQuery:
    view: FilteredPeriod
    by: str
    band: str | None = None
    q: str | None = None
    page: int = 1

    def view_params(self) -> dict[str, str]:
        """The view's parameters (period, channel, category), for links."""
        out: dict[str, str] = {}
        if self.view.since is not None:
            out["since"] = self.view.since.isoformat()
        if self.view.until is not None:
            out["until"] = self.view.until.isoformat()
        if self.view.channel:
            out["channel"] = self.view.channel
        if self.view.category:
            out["category"] = self.view.category
        return out

    def comment_params(self) -> dict[str, str]:
        out = self.view_params()
        if self.band:
            out["band"] = self.band
        if self.q:
            out["q"] = self.q
        return out

    def url(self, path: str = "/dashboard", **changes: object) -> str:
        params: dict[str, object] = {**self.comment_params(), "by": self.by, "page": self.page}
        params.update(changes)
        kept = {
            k: v for k, v in params.items() if v not in (None, "") and not (k == "page" and v == 1)
        }
        return f"{path}?{urlencode(kept)}" if kept else path


def _page(value: str | None) -> int:
    if value is None or value.strip() == "":
        return 1
    try:
        page = int(value)
    except ValueError:
        raise ReportError(f"page: {value!r} is not a whole number from 1") from None
    if not 1 <= page <= MAX_PAGE:
        raise ReportError(f"page: must be from 1 to {MAX_PAGE}, not {page}")
    return page


def parse_dashboard(params: QueryParams, today: date) -> DashboardQuery:
    """The checked query; ReportError naming the first bad parameter."""
    unknown = sorted(set(params) - KNOWN)
    if unknown:
        raise ReportError(f"{unknown[0]}: unknown parameter; known: {', '.join(sorted(KNOWN))}")
    for name in sorted(KNOWN):
        if len(params.getlist(name)) > 1:
            raise ReportError(f"{name}: given more than once")
    since = parse_date(params.get("since"), "since") or today - timedelta(days=DEFAULT_DAYS - 1)
    until = parse_date(params.get("until"), "until") or today + timedelta(days=1)
    q = (params.get("q") or "").strip()
    if len(q) > MAX_QUERY:
        raise ReportError(f"q: longer than {MAX_QUERY} characters")
    return DashboardQuery(
        view=make_view(
            since,
            until,
            parse_channel(params.get("channel")),
            parse_category(params.get("category")),
        ),
        by=parse_by(params.get("by")) or DEFAULT_BY,
        band=parse_band(params.get("band")),
        q=q or None,
        page=_page(params.get("page")),
    )
