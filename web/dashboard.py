"""``GET /dashboard``: the operators' page (basic auth), read at a glance.

It shows the report of a view (a purchase period, default the last 90 days, optionally one
channel and one category): the NPS of those who answered beside the NPS re-weighted for who
answered, each with its interval, the response rate, the interpretation band and the
operator's benchmark (``[survey] benchmark``); charts drawn on the server as SVG
(:mod:`web.dashboard_charts`); the latest comments, by band and searchable; the segment table;
and the technical tables in a collapsed "method" section. Every figure is the report JSON's
(``reports/REPORT_JSON.md``), as ``GET /v1/reports/nps`` serves it, cached until the data
changes (:mod:`web.dashboard_data`). Every asset is ours: the style sheet is
``/dashboard/static/dashboard.css`` and the page runs no script. A bad parameter is answered 422
with the page and the parameter named.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from models import utcnow
from reports.filters import BANDS, CHANNELS
from reports.params import SEGMENT_KEYS, ReportError
from web import dashboard_charts as charts
from web import dashboard_view as words
from web.auth import require_basic
from web.dashboard_data import Figures, load_comments, load_figures
from web.dashboard_params import parse_dashboard
from web.deps import runtime_of
from web.errors import ApiError
from web.openapi import error_responses

router = APIRouter()
STATIC: Final = Path(__file__).parent / "static"
STATIC_FILES: Final = {"dashboard.css": "text/css; charset=utf-8"}
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "dashboard_templates"),
    autoescape=select_autoescape(["html"]),
)
_templates.filters.update(
    fmt=words.fmt, pct=words.pct, signed=words.signed, interval=words.interval
)
HEADERS: Final = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _charts(figures: Figures) -> dict[str, Any]:
    report = figures.report
    timing = report.get("timing") or {}
    return {
        "weekly": charts.weekly_chart(figures.weeks),
        "histogram": charts.histogram_chart(figures.extras.histogram, report["bands"]),
        "bands": charts.bands_bar(report["counts"]),
        "by_channel": charts.rate_chart(
            figures.extras.by_channel, "Response rate by channel", "Channel"
        ),
        "by_arm": charts.rate_chart(
            timing.get("by_arm", []), "Response rate by delay arm", "Delay arm"
        ),
        "by_delay": charts.rate_chart(
            timing.get("by_delay", []),
            "Response rate by days from anchor to invitation",
            "Days after anchor",
        ),
        "funnel": charts.funnel_chart(report["coverage"]),
    }


def _context(figures: Figures, benchmark: float | None) -> dict[str, Any]:
    report = figures.report
    adjusted = report.get("adjusted") or {}
    # The band describes the NPS of everyone invited when it could be estimated.
    headline_nps = adjusted.get("nps") if adjusted.get("nps") is not None else report["nps"]
    return {
        "report": report,
        "adjusted": adjusted,
        "empty": not report["counts"]["n"],
        "charts": _charts(figures) if report["counts"]["n"] else {},
        "funnel": charts.funnel_chart(report["coverage"]),
        "interpretation": words.interpret(headline_nps),
        "interpreted": "adjusted" if adjusted.get("nps") is not None else "answered",
        "benchmark": benchmark,
        "versus": words.versus_benchmark(headline_nps, benchmark),
        "differs": words.differs_sentence(adjusted.get("smd") or []),
        "adjustment": words.adjustment_sentence(adjusted, report["nps"]),
        "categories": figures.extras.categories,
        "updating": figures.updating,
    }


def _page(request: Request, status: int, **context: Any) -> HTMLResponse:
    runtime = runtime_of(request)
    page = _templates.get_template("dashboard.html").render(
        shop=runtime.config.survey.shop_name,
        segments=SEGMENT_KEYS,
        channels=CHANNELS,
        bands=BANDS,
        **context,
    )
    return HTMLResponse(page, status_code=status, headers=HEADERS)


@router.get(
    "/dashboard",
    response_class=HTMLResponse,
    summary="The operators' dashboard (HTML; a bad parameter is a 422 page naming it)",
    responses=error_responses(401),
)
async def dashboard(request: Request) -> HTMLResponse:
    runtime = runtime_of(request)
    require_basic(request, runtime.settings.dashboard_password)
    now: datetime = utcnow()
    try:
        query = parse_dashboard(request.query_params, now.date())
    except ReportError as exc:
        message = str(exc)
        return _page(
            request,
            422,
            error=message,
            error_param=message.partition(":")[0],
            form=dict(request.query_params),
            query=None,
        )
    figures = await run_in_threadpool(load_figures, runtime, query, now)
    comments = await run_in_threadpool(load_comments, runtime, query)
    return _page(
        request,
        200,
        error=None,
        query=query,
        form={**query.comment_params(), "by": query.by},
        comments=comments,
        **_context(figures, runtime.config.survey.benchmark),
    )


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def dashboard_static(name: str) -> Response:
    """The page's own assets (no data in them, so no password: a browser fetches them with
    the page)."""
    media = STATIC_FILES.get(name)
    if media is None:
        raise ApiError(404, "not_found", "no such file")
    return FileResponse(
        STATIC / name, media_type=media, headers={"Cache-Control": "public, max-age=3600"}
    )
