"""``GET /v1/reports/nps`` (the report JSON of ``nps-dispatch report --format json``) and
``GET /v1/reports/answers`` (the answers with a comment), both for one view of the purchases.

Basic auth with ``NPS_DASHBOARD_PASSWORD``. Query parameters of the report, as the CLI flags:
``since``, ``until`` (``YYYY-MM-DD``, UTC; since inclusive, until exclusive), ``by``
(channel, category, arm, delay, country, week), ``compare_since``, ``compare_until``,
``compare`` (``false`` for none; default: the previous period when since and until are given)
and ``format`` (``json``, the default, or ``csv``: a download whose text cells that would start a
spreadsheet formula are escaped, see ``reports/render.py``); and the dashboard's filters
``channel`` (email, sms) and ``category``, with which the report gains ``filters``. The report
is cached per view until the data changes (:mod:`web.dashboard_data`).

The answers: ``since``, ``until``, ``channel``, ``category``, ``band`` (detractor, passive,
promoter), ``q`` (a case-insensitive text in the comment) and ``format``: ``json`` (a page of
100, ``page`` from 1, latest first) or ``csv`` (every answer, a download, formula-like cells
escaped). A bad parameter is answered 422 ``invalid_parameter`` in the error shape of
:mod:`web.errors`, ``param`` naming the parameter.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from models import utcnow
from reports.comments import MAX_QUERY, Comment, comment_page, iter_comments
from reports.filters import FilteredPeriod, make_view, parse_band, parse_category, parse_channel
from reports.params import ReportError, parse_by, parse_date
from web.auth import require_basic
from web.dashboard_data import cached_report
from web.deps import runtime_of
from web.errors import json_error
from web.openapi import BASIC, error_responses
from wiring.runtime import Runtime

router = APIRouter()

KNOWN_PARAMS = frozenset(
    {
        "since",
        "until",
        "by",
        "compare_since",
        "compare_until",
        "compare",
        "format",
        "channel",
        "category",
    }
)
ANSWER_PARAMS = frozenset({"since", "until", "channel", "category", "band", "q", "format", "page"})
ANSWERS_PER_PAGE: Final = 100
ANSWER_COLUMNS: Final = ("answered_at", "score", "band", "channel", "category", "comment")
_TRUE = {"1", "true", "yes", "on", "previous"}
_FALSE = {"0", "false", "no", "off", "none"}
_DOWNLOAD = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def _error(message: str, request: Request) -> JSONResponse:
    # Report errors read "<parameter>: <reason>"; the parameter, when it is one, is the param.
    name, _, _ = message.partition(":")
    param = name if name in KNOWN_PARAMS | ANSWER_PARAMS or name in request.query_params else None
    return json_error(422, "invalid_parameter", message, param)


def _check_names(request: Request, known: frozenset[str]) -> None:
    query = request.query_params
    unknown = sorted(set(query) - known)
    if unknown:
        raise ReportError(f"{unknown[0]}: unknown parameter; known: {', '.join(sorted(known))}")
    for name in sorted(known):
        if len(query.getlist(name)) > 1:
            raise ReportError(f"{name}: given more than once")


def _view(request: Request) -> FilteredPeriod:
    query = request.query_params
    return make_view(
        parse_date(query.get("since"), "since"),
        parse_date(query.get("until"), "until"),
        parse_channel(query.get("channel")),
        parse_category(query.get("category")),
    )


def _report(runtime: Runtime, request: Request) -> dict[str, Any]:
    """The report of the request's parameters (ReportError on a bad one)."""
    _check_names(request, KNOWN_PARAMS)
    query = request.query_params
    compare_raw = query.get("compare", "true").strip().lower()
    if compare_raw not in _TRUE | _FALSE:
        raise ReportError(f"compare: {query.get('compare')!r} is not true or false")
    view = _view(request)
    by = parse_by(query.get("by"))
    compare = compare_raw in _TRUE
    compare_since = parse_date(query.get("compare_since"), "compare_since")
    compare_until = parse_date(query.get("compare_until"), "compare_until")
    now = utcnow()
    if compare_since is None and compare_until is None:
        return cached_report(runtime, view, by, now, compare=compare)
    from reports.filtered import build_view_report

    return build_view_report(
        runtime.factory,
        runtime.config,
        view,
        by,
        compare=compare,
        compare_since=compare_since,
        compare_until=compare_until,
        now=now,
    )


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
        report = await run_in_threadpool(_report, runtime, request)
    except ReportError as exc:
        return _error(str(exc), request)
    if fmt == "csv":
        from reports.render import render_csv

        # Formula-like cells are escaped by render_csv; served as a download, never sniffed.
        return PlainTextResponse(
            render_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="nps-report.csv"', **_DOWNLOAD},
        )
    return JSONResponse(report)


def _answer_row(c: Comment) -> dict[str, Any]:
    return {
        "answered_at": c.answered_at.isoformat(timespec="seconds"),
        "score": c.score,
        "band": c.band,
        "channel": c.channel,
        "category": c.category,
        "comment": c.comment,
    }


def _csv_lines(rows: Iterator[Comment]) -> Iterator[str]:
    from reports.render import csv_cell

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(ANSWER_COLUMNS)
    for n, comment in enumerate(rows, 1):
        row = _answer_row(comment)
        writer.writerow([csv_cell(row[k]) for k in ANSWER_COLUMNS])
        if n % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _stream_answers(
    runtime: Runtime, view: FilteredPeriod, band: str | None, q: str | None
) -> Iterator[str]:
    from reports.build import bands_of

    with runtime.factory() as session:
        yield from _csv_lines(
            iter_comments(session, view, bands_of(runtime.config), band=band, query=q)
        )


def _answers_page(
    runtime: Runtime, view: FilteredPeriod, band: str | None, q: str | None, page: int
) -> dict[str, Any]:
    from reports.build import bands_of

    with runtime.factory() as session:
        found = comment_page(
            session,
            view,
            bands_of(runtime.config),
            band=band,
            query=q,
            page=page,
            per_page=ANSWERS_PER_PAGE,
        )
    return {
        "answers": [_answer_row(c) for c in found.comments],
        "page": found.page,
        "has_older": found.has_older,
    }


@router.get(
    "/v1/reports/answers",
    summary="The answers with a comment, latest first (JSON pages or one CSV)",
    openapi_extra={"security": BASIC},
    responses=error_responses(401, 422),
)
async def get_answers(request: Request) -> Response:
    runtime = runtime_of(request)
    require_basic(request, runtime.settings.dashboard_password)
    query = request.query_params
    try:
        _check_names(request, ANSWER_PARAMS)
        fmt = query.get("format", "json")
        if fmt not in ("json", "csv"):
            raise ReportError(f"format: {fmt!r} is not json or csv")
        view = _view(request)
        band = parse_band(query.get("band"))
        q = (query.get("q") or "").strip() or None
        if q is not None and len(q) > MAX_QUERY:
            raise ReportError(f"q: longer than {MAX_QUERY} characters")
        raw_page = query.get("page") or "1"
        if not raw_page.isdigit() or int(raw_page) < 1:
            raise ReportError(f"page: {raw_page!r} is not a whole number from 1")
    except ReportError as exc:
        return _error(str(exc), request)
    if fmt == "csv":
        return StreamingResponse(
            _stream_answers(runtime, view, band, q),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="nps-answers.csv"', **_DOWNLOAD},
        )
    body = await run_in_threadpool(_answers_page, runtime, view, band, q, int(raw_page))
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
