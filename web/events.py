"""`POST /v1/events`: one event or an array of at most 1000, answered per item.

Each item is answered with ``{"event_id", "status", ...}``: ``accepted`` with its ``outcome``
(what planning recorded), ``duplicate``, or ``conflict`` / ``rejected`` with ``error`` (one
line) and ``errors`` (one entry per problem, its field path in ``param``). A single event is
answered with its result; when it was not taken (409, 422, 500) the body is in the error shape of
every error answer, its result's fields beside ``error``. An array is answered 200 with
``results`` in the order sent, or 422 when every event was rejected for its content.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ingest.service import IngestResult, ingest_batch
from web.auth import require_bearer
from web.deps import runtime_of
from web.errors import json_error
from web.openapi import MAX_BATCH, events_operation

__all__ = ["MAX_BATCH", "router"]

router = APIRouter()


@router.post(
    "/v1/events",
    summary="Send shop events",
    response_model=None,
    openapi_extra=events_operation(),
)
async def post_events(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    require_bearer(request, runtime.settings.ingest_token)
    body = await request.body()
    try:
        payload: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return json_error(400, "invalid_json", f"body is not valid JSON: {exc}")
    single = isinstance(payload, dict)
    items = [payload] if single else payload
    if not isinstance(items, list):
        return json_error(
            422, "invalid_request", "body must be one event object or an array of events"
        )
    if not items:
        return json_error(422, "invalid_request", "the array holds no events")
    if len(items) > MAX_BATCH:
        return json_error(
            413, "batch_too_large", f"at most {MAX_BATCH} events per request; got {len(items)}"
        )
    results = await run_in_threadpool(ingest_batch, runtime.factory, items, runtime.config)
    if single:
        return _single(results[0])
    answers = [r.to_dict() for r in results]
    # Answered 207-style with 200 and per-item results; 422 only when every item was rejected
    # for its content (a failure on our side is worth sending again).
    if all(r.status == "rejected" and not r.retryable for r in results):
        return json_error(
            422,
            "invalid_event",
            "every event of the array was rejected; see each result's errors",
            extra={"results": answers},
        )
    return JSONResponse({"results": answers})


def _single(result: IngestResult) -> JSONResponse:
    answer = result.to_dict()
    if result.status in ("accepted", "duplicate"):
        return JSONResponse(answer)
    problems = result.problems()
    if result.status == "conflict":
        # The event_id is taken by other content, as with a reused idempotency key.
        status, code = 409, "conflict"
    elif result.retryable:
        status, code = 500, "internal_error"  # nothing kept: safe to send again
    else:
        status, code = 422, "invalid_event"
    del answer["error"]  # the summary line becomes the error's message
    # The first problem's field names the error; ``errors`` lists every one.
    param = problems[0].param if problems else None
    return json_error(status, code, result.error or code, param, extra=answer)
