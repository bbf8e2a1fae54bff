"""The OpenAPI document (``/openapi.json``, ``/docs``): enough for a shop to generate a client.

``POST /v1/events`` reads its raw body itself, to answer item by item, so FastAPI cannot see its
body or answers; they are described here: the event models (a union discriminated by ``type``)
as the request body, one event or an array of at most 1000; the per-item result with its
``outcome``; the error shape. The security schemes say who calls what: the shop's bearer token,
the operators' basic password (dashboard, reports, metrics; metrics also takes its own token),
and the providers' signature headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import fastapi.routing
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from channels.sendgrid_email.webhooks import SIGNATURE_HEADER as SENDGRID_SIGNATURE
from channels.twilio_sms.webhooks import SIGNATURE_HEADER as TWILIO_SIGNATURE
from ingest.outcome import Outcome
from ingest.schema import EVENT_MODELS
from web.errors import ErrorBody, ErrorDetail

__all__ = [
    "BASIC",
    "BEARER",
    "MAX_BATCH",
    "METRICS",
    "BatchRejected",
    "EventError",
    "EventResult",
    "EventResults",
    "error_responses",
    "install_openapi",
    "ref",
]

MAX_BATCH = 1000
BEARER: list[dict[str, list[str]]] = [{"ingestToken": []}]
BASIC: list[dict[str, list[str]]] = [{"operatorPassword": []}]
METRICS: list[dict[str, list[str]]] = [{"operatorPassword": []}, {"metricsToken": []}]

SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "ingestToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "NPS_INGEST_TOKEN: the shop's token for POST /v1/events",
    },
    "operatorPassword": {
        "type": "http",
        "scheme": "basic",
        "description": "NPS_DASHBOARD_PASSWORD, with any user name: dashboard, reports, metrics",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "NPS_METRICS_TOKEN, when set: GET /metrics for Prometheus",
    },
    "twilioSignature": {
        "type": "apiKey",
        "in": "header",
        "name": TWILIO_SIGNATURE,
        "description": "Twilio's request signature (set by Twilio)",
    },
    "sendgridSignature": {
        "type": "apiKey",
        "in": "header",
        "name": SENDGRID_SIGNATURE,
        "description": "SendGrid's ECDSA event webhook signature (set by SendGrid)",
    },
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


class EventResult(BaseModel):
    """What became of one event."""

    event_id: str | None = Field(description="the event's id, when it had a usable one")
    status: Literal["accepted", "duplicate", "conflict", "rejected"]
    error: str | None = Field(
        None,
        description="when not taken: one line naming each problem as `field.path: reason`",
    )
    errors: list[ErrorDetail] | None = Field(
        None, description="when not taken: one entry per problem, `param` its field path"
    )
    outcome: Outcome | None = Field(None, description="when accepted: what the event did")


class EventResults(BaseModel):
    """The answer to an array: one result per event, in the order sent."""

    results: list[EventResult]


class EventError(BaseModel):
    """A single event not taken (409 conflict, 422 rejected, 500 not applied): the error shape,
    with the event's result beside it."""

    error: ErrorDetail
    event_id: str | None
    status: Literal["conflict", "rejected"]
    errors: list[ErrorDetail]


class BatchRejected(BaseModel):
    """An array whose every event was rejected for its content (422)."""

    error: ErrorDetail
    results: list[EventResult]


_ANSWERS: tuple[type[BaseModel], ...] = (
    ErrorBody,
    EventResult,
    EventResults,
    EventError,
    BatchRejected,
)

_DESCRIPTIONS = {
    400: "Bad request (e.g. the body is not JSON)",
    401: "Missing or wrong credentials",
    403: "Signature check failed; nothing was written",
    404: "No such route",
    405: "Method not allowed (see Allow)",
    409: "Conflict",
    413: "Body too large",
    422: "Invalid request",
    429: "Too many requests (see Retry-After)",
    500: "An error on our side",
    503: "Unavailable",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses in the error shape, for ``responses=`` of a route."""
    return {status: _json(ref("ErrorBody"), _DESCRIPTIONS[status]) for status in statuses}


def events_operation() -> dict[str, Any]:
    """The request body and answers of ``POST /v1/events`` (``openapi_extra``)."""
    one = ref("ShopEvent")
    examples = {
        model.__name__: {"value": model.model_json_schema()["examples"][0]}
        for model in EVENT_MODELS
    }
    return {
        "security": BEARER,
        "requestBody": {
            "required": True,
            "description": f"One event, or an array of 1 to {MAX_BATCH} events.",
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            one,
                            {
                                "type": "array",
                                "items": one,
                                "minItems": 1,
                                "maxItems": MAX_BATCH,
                            },
                        ]
                    },
                    "examples": examples,
                }
            },
        },
        "responses": {
            "200": _json(
                {"oneOf": [ref("EventResult"), ref("EventResults")]},
                "Each event answered: accepted (with its outcome) or duplicate; in an array, "
                "also the events not taken, with their errors",
            ),
            "400": _json(ref("ErrorBody"), _DESCRIPTIONS[400]),
            "401": _json(ref("ErrorBody"), _DESCRIPTIONS[401]),
            "409": _json(ref("EventError"), "The event_id is taken by a different event"),
            "413": _json(ref("ErrorBody"), "Body over 2 MiB, or more than 1000 events"),
            "422": _json(
                {"oneOf": [ref("EventError"), ref("BatchRejected"), ref("ErrorBody")]},
                "The event (or every event of the array) was rejected; or the body is neither "
                "an event nor an array of events",
            ),
            "429": _json(ref("ErrorBody"), _DESCRIPTIONS[429]),
            "500": _json(
                {"oneOf": [ref("EventError"), ref("ErrorBody")]},
                "Not applied because of an error on our side; nothing was kept, send it again",
            ),
        },
    }


def _components() -> dict[str, Any]:
    template = "#/components/schemas/{model}"
    _, inputs = models_json_schema([(m, "validation") for m in EVENT_MODELS], ref_template=template)
    _, outputs = models_json_schema([(m, "serialization") for m in _ANSWERS], ref_template=template)
    schemas: dict[str, Any] = {**inputs.get("$defs", {}), **outputs.get("$defs", {})}
    mapping = {
        kind: f"#/components/schemas/{model.__name__}"
        for model in EVENT_MODELS
        for kind in get_args(model.model_fields["type"].annotation)
    }
    schemas["ShopEvent"] = {
        "description": "One shop event; `type` says which.",
        "oneOf": [ref(model.__name__) for model in EVENT_MODELS],
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }
    return schemas


def _error_shape_for_validation(document: dict[str, Any]) -> None:
    """FastAPI documents a route parameter's 422 with its own body; ours is the error shape."""
    theirs = ref("HTTPValidationError")
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            content = answer.get("content", {}).get("application/json", {})
            if content.get("schema") == theirs:
                content["schema"] = ref("ErrorBody")
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _documented(routes: Sequence[Any]) -> list[Any]:
    """Every route but the answer page's. Recent FastAPI keeps an included router as one entry,
    flattened by ``iter_route_contexts``; older versions list the routes themselves."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    flat = list(flatten(routes)) if flatten is not None else list(routes)
    return [r for r in flat if not str(getattr(r, "path", None) or "").startswith("/s/")]


def install_openapi(app: FastAPI) -> None:
    """Serve the document with the event schemas and security schemes added to FastAPI's.

    The answer page (``/s/...``) is left out: pages for customers' browsers, reached through
    the signed links of our own messages, not an API to generate a client for."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=_documented(app.routes),
            )
            components = document.setdefault("components", {})
            components.setdefault("schemas", {}).update(_components())
            components["securitySchemes"] = SECURITY_SCHEMES
            _error_shape_for_validation(document)
            dashboard = document.get("paths", {}).get("/dashboard", {}).get("get")
            if dashboard is not None:
                dashboard["security"] = BASIC
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
