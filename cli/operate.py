"""The long-running processes of the Procfile (`web`, `worker`, `scheduler`) and `tick`, with
their metrics.

Metrics: the counters of :mod:`logs.metrics` are summed over ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode) when it is set. `web` serves them at ``GET /metrics``;
`worker` and `scheduler` on ``--metrics-port`` (``NPS_METRICS_PORT``), bound to
``NPS_METRICS_HOST`` and guarded by ``NPS_METRICS_TOKEN`` when set. A process that starts
children (`worker`, `web --workers N`) without the variable makes a private directory for
them, so that its one endpoint still counts all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cli.common import (
    console,
    err_console,
    non_negative_int,
    positive_int,
    require_broker,
    runtime_with_key,
    seconds,
)
from config.settings import (
    WORKER_EVENT_THREADS,
    WORKER_EVENT_THREADS_MAX,
    WORKER_THREADS,
    Settings,
    SettingsError,
    environ,
    export_event_threads,
    export_metrics_dir,
)
from wiring.heap import freeze_startup_heap

if TYPE_CHECKING:
    from dispatch.scheduler import Scheduler
    from wiring.runtime import Runtime


def _shared_metrics_dir(settings: Settings) -> str:
    """The multiprocess directory the children of this process count in; made and exported
    when unset. Must run before prometheus_client is imported here (it reads it once)."""
    if settings.prometheus_multiproc_dir:
        return settings.prometheus_multiproc_dir
    path = tempfile.mkdtemp(prefix="nps-metrics-")
    export_metrics_dir(path)
    return path


def _serve_metrics(settings: Settings, port: int | None, multiproc_dir: str | None) -> None:
    if port is None:
        return
    from logs.exposition import metrics_registry, serve_metrics

    server = serve_metrics(
        port, settings.metrics_host, metrics_registry(multiproc_dir), settings.metrics_token
    )
    console.print(
        f"metrics on http://{settings.metrics_host}:{server.server_port}/metrics", markup=False
    )


def cmd_tick(args: argparse.Namespace) -> int:
    # Without Redis the queued ids would go to an in-process queue that dies with this command.
    if not require_broker(Settings.from_env()):
        return 2
    from worker.scheduling import build_scheduler

    runtime = runtime_with_key()
    if runtime is None:
        return 2
    report = build_scheduler(runtime).tick(runtime.config)
    console.print(
        f"re-planned {report.replanned}, anchored {report.anchored}, queued {report.queued}, "
        f"deferred {report.deferred}, stopped {report.stopped}, requeued {report.requeued}, "
        f"closed {report.closed}, settled {report.settled}, reminders {report.reminders}"
    )
    for step, count in sorted(report.failures.items()):
        err_console.print(f"step {step} failed ({count}); see the log", markup=False)
    return 1 if report.failures else 0


def tuned_scheduler(sched: Scheduler, runtime: Runtime, args: argparse.Namespace) -> Scheduler:
    """Apply the scheduler's timing flags; a flag left out keeps the built-in default.

    The defaults suit production (a send is given up after an hour); a test bed that compresses
    days into seconds needs the same recovery paths to run within seconds too.
    """
    if getattr(args, "stuck_after", None) is not None:
        sched.stuck_after = timedelta(seconds=args.stuck_after)
    if getattr(args, "sending_timeout", None) is not None:
        sched.sending_timeout = timedelta(seconds=args.sending_timeout)
    if getattr(args, "give_up_after", None) is not None:
        from wiring.services import sender

        give_up = timedelta(seconds=args.give_up_after)

        def settle(survey_id: int, now: datetime) -> object:
            return sender(runtime).settle(survey_id, runtime.config, now, give_up)

        sched.settle = settle
    return sched


def cmd_scheduler(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if not require_broker(settings):
        return 2
    from worker.scheduling import build_scheduler, run_forever

    runtime = runtime_with_key()
    if runtime is None:
        return 2
    runtime.config_holder.install_sighup_handler()
    runtime.config_holder.start_watching()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _serve_metrics(
        settings, _port(args, settings), settings.prometheus_multiproc_dir
    )  # one process: its own counters, or the host's with a multiprocess directory
    console.print(f"scheduler running (config {runtime.config.version}); Ctrl-C to stop")
    with contextlib.suppress(KeyboardInterrupt):
        scheduler = tuned_scheduler(build_scheduler(runtime), runtime, args)
        freeze_startup_heap()
        run_forever(
            scheduler,
            lambda: runtime.config,
            args.interval,
            stop.is_set,
        )
    return 0


def _port(args: argparse.Namespace, settings: Settings) -> int | None:
    port: int | None = getattr(args, "metrics_port", None)
    return port if port is not None else settings.metrics_port


def _event_threads(text: str) -> int:
    count = non_negative_int(text)
    if count > WORKER_EVENT_THREADS_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {WORKER_EVENT_THREADS_MAX}, not {count}")
    return count


def cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if not require_broker(settings):
        return 2
    try:
        settings.require_production_secrets()
    except SettingsError as exc:
        err_console.print(str(exc))
        return 2
    port = _port(args, settings)
    if port is not None:
        # dramatiq forks the worker processes from this one, which only serves their sum.
        _serve_metrics(settings, port, _shared_metrics_dir(settings))
    from dramatiq.cli import main as dramatiq_main

    argv = [
        "dramatiq",
        "worker.actors",
        "--processes",
        str(args.processes),
        "--threads",
        str(args.threads),
        # Our LoggingMiddleware sets up logging in each worker process; dramatiq's own set-up
        # would print every failed message with its arguments.
        "--skip-logging",
    ]
    # dramatiq starts the worker processes with this process's environment.
    export_event_threads(args.event_threads)
    sys.argv = argv
    return int(dramatiq_main() or 0)  # type: ignore[no-untyped-call]


def cmd_web(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    try:
        settings.require_production_secrets()
    except SettingsError as exc:
        err_console.print(str(exc))
        return 2
    workers = args.workers if args.workers is not None else settings.web_concurrency
    if workers > 1:
        _shared_metrics_dir(settings)  # before uvicorn starts the worker processes
    import uvicorn

    port = int(args.port or environ().get("PORT", "8000"))
    # proxy_headers=False: the app itself reads X-Forwarded-For, trusting only the hops in
    # NPS_TRUSTED_PROXIES; log_config=None: access lines go through our masking handler.
    options: dict[str, Any] = {
        "host": args.host,
        "port": port,
        "proxy_headers": False,
        "log_config": None,
    }
    if workers > 1:
        # Each worker process imports the app factory by name and sets up its own logging.
        uvicorn.run("web.app:serve_app", factory=True, workers=workers, **options)
    else:
        from web.app import create_app

        app = create_app()
        freeze_startup_heap()
        uvicorn.run(app, **options)
    return 0


def add_parsers(sub: Any) -> None:
    """Register `web`, `worker`, `scheduler` and `tick` on an ``add_subparsers()`` object."""
    web = sub.add_parser("web", help="the HTTP app (events, webhooks, answer page, dashboard)")
    web.add_argument(
        "--host",
        default="0.0.0.0",  # noqa: S104 - a server process binds all
        help="address to listen on",
    )
    web.add_argument("--port", type=int, default=None, help="default: $PORT or 8000")
    web.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="uvicorn worker processes (default: $WEB_CONCURRENCY or 1)",
    )
    web.set_defaults(func=cmd_web)

    worker = sub.add_parser("worker", help="dramatiq worker on $NPS_BROKER_URL")
    worker.add_argument(
        "--processes", type=positive_int, default=os.cpu_count() or 1, help="worker processes"
    )
    worker.add_argument(
        "--threads",
        type=positive_int,
        default=WORKER_THREADS,
        help="threads per process, shared by every queue",
    )
    worker.add_argument(
        "--event-threads",
        type=_event_threads,
        default=WORKER_EVENT_THREADS,
        metavar="N",
        help="threads per process of the events queue's own "
        f"(default {WORKER_EVENT_THREADS}; 0: it shares the others)",
    )
    _metrics_port_option(worker)
    worker.set_defaults(func=cmd_worker)

    scheduler = sub.add_parser("scheduler", help="due surveys to the queue, in a loop")
    scheduler.add_argument(
        "--interval", type=float, default=5.0, help="seconds between passes", metavar="SECONDS"
    )
    scheduler.add_argument(
        "--stuck-after",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="enqueue again a survey queued this long (default: 600)",
    )
    scheduler.add_argument(
        "--sending-timeout",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="settle from the provider a send left in 'sending' this long (default: 120)",
    )
    scheduler.add_argument(
        "--give-up-after",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="a send still unresolved this long after it began ends send_unknown (default: 3600)",
    )
    _metrics_port_option(scheduler)
    scheduler.set_defaults(func=cmd_scheduler)

    sub.add_parser("tick", help="one scheduler pass").set_defaults(func=cmd_tick)


def _metrics_port_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics at http://$NPS_METRICS_HOST:PORT/metrics "
        "(default: $NPS_METRICS_PORT, else none)",
    )
