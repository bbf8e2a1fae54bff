"""`POST /v1/events`: one event or an array of at most 1000, answered per item."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ingest.service import IngestResult, ingest_batch
from web.auth import require_bearer
from web.deps import runtime_of

MAX_BATCH = 1000
router = APIRouter()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@router.post("/v1/events")
async def post_events(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    require_bearer(request, runtime.settings.ingest_token)
    body = await request.body()
    try:
        payload: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(400, f"body is not valid JSON: {exc}")
    single = isinstance(payload, dict)
    items = [payload] if single else payload
    if not isinstance(items, list):
        return _error(422, "body must be one event object or an array of events")
    if not items:
        return _error(422, "the array holds no events")
    if len(items) > MAX_BATCH:
        return _error(413, f"at most {MAX_BATCH} events per request; got {len(items)}")
    results = await run_in_threadpool(ingest_batch, runtime.factory, items, runtime.config)
    answers = [r.to_dict() for r in results]
    if single:
        return JSONResponse(answers[0], status_code=_single_status(results[0]))
    # A batch is answered 207-style with 200 and per-item results (a rejected item carries the
    # field path); the whole request is 422 only when every item was rejected for its content.
    all_rejected = all(r.status == "rejected" and not r.retryable for r in results)
    return JSONResponse({"results": answers}, status_code=422 if all_rejected else 200)


def _single_status(result: IngestResult) -> int:
    if result.status == "conflict":
        return 409  # the event_id is taken by other content, as with a reused idempotency key
    if result.status == "rejected":
        # Our failure (nothing kept, safe to send again) or a fault in the event itself.
        return 500 if result.retryable else 422
    return 200
