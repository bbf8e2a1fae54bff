"""One error shape for every JSON answer of the app.

``{"error": {"code": "...", "message": "...", "param": "..." | null}}``: ``code`` is a stable
snake_case string to branch on, ``message`` a sentence for people, ``param`` the field path or
parameter at fault, when there is one. Headers that go with a status stay (``WWW-Authenticate``
on 401, ``Allow`` on 405, ``Retry-After`` on 429).

Which answers are JSON is decided by the path: the API, the webhooks, ``/metrics``,
``/healthz`` and the OpenAPI document always; the answer page and the dashboard, which people
read in a browser, get a small HTML page instead; any other path (an unknown route) gets JSON
unless the client asks for HTML.

An unexpected exception is answered 500 with a generic message (the exception's text can quote
SQL and the values bound to it) and logged by its kind and place only.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.service import failure_label

__all__ = [
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "UnexpectedErrors",
    "error_body",
    "install_error_handlers",
    "json_error",
    "send_error",
    "wants_json",
]

log = logging.getLogger(__name__)

JSON_PREFIXES = ("/v1/", "/webhooks/", "/metrics", "/healthz", "/openapi.json")
HTML_PREFIXES = ("/s/", "/dashboard", "/docs")

# The code of an error answer that names none of its own, by status.
DEFAULT_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}
UNEXPECTED = "an unexpected error on our side; the X-Request-ID header of this answer names it"


class ErrorDetail(BaseModel):
    code: str = Field(description="stable snake_case code, e.g. invalid_event, unauthorized")
    message: str = Field(description="what went wrong, for people")
    param: str | None = Field(
        description="the field path (customer.phone) or parameter at fault, if any"
    )


class ErrorBody(BaseModel):
    """The body of every error answer of the JSON routes."""

    error: ErrorDetail


class ApiError(HTTPException):
    """An error answer with its own code (and field path)."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=dict(headers or {}))
        self.code = code
        self.param = param


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "param": param}}


def json_error(
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """An error answer; ``extra`` keys go beside ``error`` (a rejected event's own fields)."""
    body = {**error_body(code, message, param), **(extra or {})}
    return JSONResponse(body, status_code=status, headers=headers)


def wants_json(path: str, accept: str | None) -> bool:
    if path.startswith(JSON_PREFIXES):
        return True
    if path.startswith(HTML_PREFIXES):
        return False
    return "text/html" not in (accept or "")


def _accept(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"accept":
            return bytes(value).decode("latin-1")
    return None


def _html_page(status: int, message: str) -> str:
    title = f"{status} {_phrase(status)}"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head>\n"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>\n"
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_response(
    scope: Scope,
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The error answer for this request: JSON, or HTML for the pages people read."""
    if wants_json(str(scope.get("path", "")), _accept(scope)):
        return json_error(status, code, message, param, headers)
    return HTMLResponse(_html_page(status, message), status_code=status, headers=headers)


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Answer from ASGI middleware, before the app has seen the request."""
    response = error_response(scope, status, code, message, None, headers)

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, nothing, send)


def _message(exc: StarletteHTTPException, request: Request) -> str:
    if isinstance(exc, ApiError):
        return str(exc.detail)
    if exc.status_code == 404:
        return f"no route for {request.url.path}"
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return f"{request.method} is not allowed here; allowed: {allowed}"
    if exc.detail and exc.detail != _phrase(exc.status_code):
        return str(exc.detail)
    return _phrase(exc.status_code).lower()


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):  # registered for this type only
        raise exc
    status = exc.status_code
    code = exc.code if isinstance(exc, ApiError) else DEFAULT_CODES.get(status, "error")
    param = exc.param if isinstance(exc, ApiError) else None
    if status in (204, 304):  # no body allowed
        return Response(status_code=status, headers=exc.headers)
    return error_response(request.scope, status, code, _message(exc, request), param, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):  # registered for this type only
        raise exc
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    # The location starts with where the value came from (body, query, path, header).
    loc = [str(p) for p in first.get("loc", ())][1:]
    message = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or '(request)'}: {e.get('msg', '')}"
        for e in errors
    )
    return error_response(
        request.scope, 422, "invalid_request", message or "invalid request", ".".join(loc) or None
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


class UnexpectedErrors:
    """ASGI middleware: an exception no route handled becomes a 500 in the error shape, logged
    by its kind and the line of our code it came from, never by its text."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.error("%s %s failed: %s", scope.get("method"), _route_of(scope), failure_label(exc))
            if started:
                raise  # part of an answer went out: only closing the connection is left
            await send_error(scope, send, 500, "internal_error", UNEXPECTED)


def _route_of(scope: Scope) -> str:
    """The path for a log line; an answer link's token is a capability and stays out."""
    path = str(scope.get("path", ""))
    return "/s/[token]" if path.startswith("/s/") else path
