"""The ASGI application (`nps-dispatch web`)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text

from web import answers, dashboard, events, reports, webhooks
from web.limits import BodySizeLimit
from web.metrics import DatabaseCollector
from web.ratelimit import RateLimit
from worker.runtime import Runtime, get_runtime


def create_app(runtime: Runtime | None = None) -> FastAPI:
    app = FastAPI(title="nps-dispatch", docs_url=None, redoc_url=None)
    app.state.runtime = runtime or get_runtime()
    app.add_middleware(BodySizeLimit)
    app.add_middleware(RateLimit)  # outermost: refuses before any body is read
    app.include_router(events.router)
    app.include_router(webhooks.router)
    app.include_router(answers.router)
    app.include_router(reports.router)
    app.include_router(dashboard.router)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            with app.state.runtime.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # the load balancer needs an answer, not a traceback
            return JSONResponse({"status": "error", "database": str(exc)[:200]}, status_code=503)
        return JSONResponse({"status": "ok", "config_version": app.state.runtime.config.version})

    registry = CollectorRegistry()
    registry.register(DatabaseCollector(app.state.runtime.factory))

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    return app
