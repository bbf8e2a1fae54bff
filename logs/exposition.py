"""How a process exposes the counters of :mod:`logs.metrics`: the registry to scrape, and a
small HTTP server for the processes that have no web app (the worker and the scheduler).

With a multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``), every process of the host writes
its counters to files there and one scrape sums them all, whichever process answers it: the web
app's ``GET /metrics``, the worker's or the scheduler's metrics port. Without one, a scrape sees
the answering process's own counters only.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = ["ThisProcess", "metrics_registry", "serve_metrics"]

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ThisProcess(Collector):
    """The counters of this process (prometheus_client's default registry)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def metrics_registry(multiproc_dir: str | None, *extra: Collector) -> CollectorRegistry:
    """A registry of the host's counters (summed over ``multiproc_dir``) or, without a
    directory, of this process's; plus ``extra`` collectors."""
    registry = CollectorRegistry(auto_describe=False)
    if multiproc_dir:
        MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
    else:
        registry.register(ThisProcess())
    for collector in extra:
        registry.register(collector)
    return registry


class _QuietHandler(WSGIRequestHandler):
    """No line per scrape on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        return


def _with_token(app: WsgiApp, token: str | None) -> WsgiApp:
    """``app`` answering 401 unless ``Authorization: Bearer <token>`` (when a token is set)."""
    if not token:
        return app
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        given = str(environ.get("HTTP_AUTHORIZATION", "")).encode()
        if not hmac.compare_digest(given, expected):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"bearer token required (NPS_METRICS_TOKEN)\n"]
        return app(environ, start_response)

    return guarded


def serve_metrics(
    port: int, host: str, registry: CollectorRegistry, token: str | None = None
) -> WSGIServer:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread; returns the
    server (``shutdown()`` stops it). ``port`` 0 picks a free port (``server.server_port``)."""
    app = _with_token(make_wsgi_app(registry), token)
    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server
