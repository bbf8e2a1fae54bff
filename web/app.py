"""The ASGI application (`nps-dispatch web`)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

from web import events
from web.limits import BodySizeLimit
from worker.runtime import Runtime, get_runtime


def create_app(runtime: Runtime | None = None) -> FastAPI:
    app = FastAPI(title="nps-dispatch", docs_url=None, redoc_url=None)
    app.state.runtime = runtime or get_runtime()
    app.add_middleware(BodySizeLimit)
    app.include_router(events.router)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            with app.state.runtime.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # the load balancer needs an answer, not a traceback
            return JSONResponse({"status": "error", "database": str(exc)[:200]}, status_code=503)
        return JSONResponse({"status": "ok", "config_version": app.state.runtime.config.version})

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    return app
