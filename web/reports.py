"""``GET /v1/reports/nps``: the report JSON of ``nps-dispatch report --format json``.

Basic auth with ``NPS_DASHBOARD_PASSWORD``. Query parameters, as the CLI flags:
``since``, ``until`` (``YYYY-MM-DD``, UTC; since inclusive, until exclusive), ``by``
(channel, category, arm, delay, country, week), ``compare_since``, ``compare_until``,
``compare`` (``false`` for none; default: the previous period when since and until are given)
and ``format`` (``json``, the default, or ``csv``: a download whose text cells that would start a
spreadsheet formula are escaped, see ``reports/render.py``). A bad parameter is answered 422
``invalid_parameter`` in the error shape of :mod:`web.errors`, ``param`` naming the parameter.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from reports.build import build_report
from reports.params import ReportError, parse_by, parse_date
from reports.render import render_csv
from web.auth import require_basic
from web.deps import runtime_of
from web.errors import json_error
from web.openapi import BASIC, error_responses

router = APIRouter()

KNOWN_PARAMS = frozenset(
    {"since", "until", "by", "compare_since", "compare_until", "compare", "format"}
)
_TRUE = {"1", "true", "yes", "on", "previous"}
_FALSE = {"0", "false", "no", "off", "none"}


def _error(message: str, request: Request) -> JSONResponse:
    # Report errors read "<parameter>: <reason>"; the parameter, when it is one, is the param.
    name, _, _ = message.partition(":")
    param = name if name in KNOWN_PARAMS or name in request.query_params else None
    return json_error(422, "invalid_parameter", message, param)


def _params(request: Request) -> dict[str, Any]:
    """Validated keyword arguments of :func:`build_report` (ReportError on a bad one)."""
    query = request.query_params
    unknown = sorted(set(query) - KNOWN_PARAMS)
    if unknown:
        raise ReportError(
            f"{unknown[0]}: unknown parameter; known: {', '.join(sorted(KNOWN_PARAMS))}"
        )
    for name in KNOWN_PARAMS:
        if len(query.getlist(name)) > 1:
            raise ReportError(f"{name}: given more than once")
    compare_raw = query.get("compare", "true").strip().lower()
    if compare_raw not in _TRUE | _FALSE:
        raise ReportError(f"compare: {query.get('compare')!r} is not true or false")
    return {
        "since": parse_date(query.get("since"), "since"),
        "until": parse_date(query.get("until"), "until"),
        "by": parse_by(query.get("by")),
        "compare": compare_raw in _TRUE,
        "compare_since": parse_date(query.get("compare_since"), "compare_since"),
        "compare_until": parse_date(query.get("compare_until"), "compare_until"),
    }


@router.get(
    "/v1/reports/nps",
    summary="The NPS report (reports/REPORT_JSON.md)",
    openapi_extra={"security": BASIC},
    responses=error_responses(401, 422),
)
async def get_nps_report(request: Request) -> Response:
    runtime = runtime_of(request)
    require_basic(request, runtime.settings.dashboard_password)
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "csv"):
        return _error(f"format: {fmt!r} is not json or csv", request)
    try:
        params = _params(request)
        report = await run_in_threadpool(
            lambda: build_report(runtime.factory, runtime.config, **params)
        )
    except ReportError as exc:
        return _error(str(exc), request)
    if fmt == "csv":
        # Formula-like cells are escaped by render_csv; served as a download, never sniffed.
        return PlainTextResponse(
            render_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": 'attachment; filename="nps-report.csv"',
                "X-Content-Type-Options": "nosniff",
            },
        )
    return JSONResponse(report)
