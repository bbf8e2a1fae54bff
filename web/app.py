"""The ASGI application (`nps-dispatch web`).

The public edge, outermost first: a request id on every answer, a 500 in the error shape for an
unexpected exception (:mod:`web.errors`), the real client address behind ``NPS_TRUSTED_PROXIES``
(:mod:`web.proxy`), per-client rate limits shared through Redis when ``NPS_BROKER_URL`` is set
(:mod:`web.ratelimit`), body size caps (:mod:`web.limits`), then the routes. Every error answer
of the JSON routes is ``{"error": {"code", "message", "param"}}`` (:mod:`web.errors`); the
OpenAPI document is at ``/openapi.json`` and ``/docs`` (:mod:`web.openapi`). ``GET /healthz``
answers ``ok`` or ``failing`` and nothing more; ``GET /metrics`` needs the operators' password
(HTTP basic) or ``NPS_METRICS_TOKEN`` (bearer), and serves the counters of every process of the
host when ``PROMETHEUS_MULTIPROC_DIR`` is set (:mod:`web.metrics`).

:func:`create_app` builds the app for a runtime; :func:`serve_app` is the factory each uvicorn
worker process calls (``nps-dispatch web --workers N``): it sets up the process's logging first,
and freezes the start-up heap last (``wiring.heap``).
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import text

from config.settings import environ
from logs.format import configure_logging
from web import answers, dashboard, events, reports, shop_webhooks, webhooks
from web.auth import require_basic_or_bearer
from web.errors import UnexpectedErrors, install_error_handlers, json_error
from web.limits import BodySizeLimit
from web.metrics import app_registry
from web.openapi import METRICS, error_responses, install_openapi
from web.proxy import TrustedProxies, parse_networks
from web.ratelimit import RateLimit
from web.request_ids import RequestIdMiddleware
from wiring.heap import freeze_startup_heap
from wiring.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)

# A limited request waits for Redis: a slow Redis must cost little before the process falls
# back to its own buckets.
RATE_LIMIT_REDIS_TIMEOUT = 0.25
NO_STORE = {"Cache-Control": "no-store"}
API_VERSION = "1"  # of the HTTP API, whose paths start with /v1/


def rate_limit_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=RATE_LIMIT_REDIS_TIMEOUT,
        socket_connect_timeout=RATE_LIMIT_REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )


def create_app(runtime: Runtime | None = None) -> FastAPI:
    app = FastAPI(
        title="nps-dispatch",
        version=API_VERSION,
        description="Post-purchase NPS surveys: the shop's events in, operators' reports out.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.runtime = runtime = runtime or get_runtime()
    settings = runtime.settings
    trusted = parse_networks(settings.trusted_proxies)  # a bad entry refuses to start
    shared = rate_limit_redis(settings.broker_url) if settings.broker_url else None
    # Starlette runs the middleware added last first.
    app.add_middleware(BodySizeLimit)
    app.add_middleware(RateLimit, redis_client=shared)  # refuses before any body is read
    app.add_middleware(TrustedProxies, trusted=trusted)  # the real client before the limits
    app.add_middleware(UnexpectedErrors)  # outside the body cap, which raises to refuse
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer carries its request id
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(events.router)
    app.include_router(webhooks.router)
    app.include_router(shop_webhooks.router)
    app.include_router(answers.router)
    app.include_router(reports.router)
    app.include_router(dashboard.router)

    @app.get("/healthz", responses=error_responses(503))
    def healthz() -> Response:
        # The body is public: a status only, never an error text, a URL or a version.
        try:
            with app.state.runtime.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # the load balancer needs an answer, not a traceback
            log.warning("health check: database unreachable (%s)", exc.__class__.__name__)
            return json_error(
                503,
                "unavailable",
                "a dependency of this service is failing",
                headers=NO_STORE,
                extra={"status": "failing"},
            )
        return JSONResponse({"status": "ok"}, headers=NO_STORE)

    registry = app_registry(
        runtime.factory, lambda: app.state.runtime.config.version, settings.prometheus_multiproc_dir
    )

    @app.get(
        "/metrics",
        openapi_extra={"security": METRICS},
        responses=error_responses(401),
        response_class=PlainTextResponse,
    )
    def metrics(request: Request) -> PlainTextResponse:
        settings = app.state.runtime.settings
        require_basic_or_bearer(request, settings.dashboard_password, settings.metrics_token)
        return PlainTextResponse(
            generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST, headers=NO_STORE
        )

    return app


def serve_app() -> FastAPI:
    """The app of one uvicorn worker process, with this process's logging set up."""
    configure_logging(environ())
    app = create_app()
    freeze_startup_heap()
    return app
