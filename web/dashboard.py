"""`GET /dashboard`: the operators' page (basic auth): the report of the last 30 days by default.

It renders the same report JSON as `GET /v1/reports/nps` (reports/REPORT_JSON.md), so the page
never shows a figure the API and the CLI would not.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from models import utcnow
from reports.build import build_report
from reports.params import ReportError
from web.auth import require_basic
from web.deps import runtime_of

router = APIRouter()
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "dashboard_templates"),
    autoescape=select_autoescape(["html"]),
)
SEGMENTS = ("channel", "category", "arm", "delay", "country", "week")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


_templates.filters["fmt"] = _fmt
_templates.filters["pct"] = _pct


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request) -> HTMLResponse:
    runtime = runtime_of(request)
    require_basic(request, runtime.settings.dashboard_password)
    params = request.query_params
    by = params.get("by") or "channel"
    today = utcnow().date()
    since = params.get("since") or (today - timedelta(days=30)).isoformat()
    until = params.get("until") or (today + timedelta(days=1)).isoformat()
    report: dict[str, Any] | None = None
    error: str | None = None
    try:
        report = await run_in_threadpool(
            build_report,
            runtime.factory,
            runtime.config,
            since,
            until,
            by if by in SEGMENTS else None,
        )
    except ReportError as exc:
        error = str(exc)
    page = _templates.get_template("dashboard.html").render(
        report=report,
        error=error,
        by=by,
        since=since,
        until=until,
        segments=SEGMENTS,
        shop=runtime.config.survey.shop_name,
    )
    return HTMLResponse(page, status_code=422 if error else 200)
