"""`nps-dispatch`: the command line of every process and operator task (listed in the README)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from config.settings import Settings, SettingsError, environ

if TYPE_CHECKING:
    from dispatch.scheduler import Scheduler
    from wiring.runtime import Runtime

console = Console()
err_console = Console(stderr=True)


def _setup_logging() -> None:
    from logs.format import configure_logging

    configure_logging(environ())


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from migrations.runner import upgrade
    from models.session import make_engine

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    console.print(f"database at {engine.url.render_as_string(hide_password=True)} is up to date")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from config import check_config_file, config_path_from_env

    path = Path(args.file) if args.file else config_path_from_env()
    ok, message = check_config_file(path)
    (console if ok else err_console).print(message, markup=False, highlight=False)
    return 0 if ok else 1


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, _BadLine(f"line {number}: not valid JSON: {exc.msg}")


class _BadLine:
    def __init__(self, error: str) -> None:
        self.error = error


def cmd_ingest(args: argparse.Namespace) -> int:
    from ingest.service import IngestResult, ingest_batch

    path = Path(args.file)
    if not path.is_file():
        err_console.print(f"no such file: {path}")
        return 2
    runtime = _runtime_with_key()
    if runtime is None:
        return 2
    total_lines = sum(1 for line in path.open(encoding="utf-8") if line.strip())
    counts = {"accepted": 0, "duplicate": 0, "conflict": 0, "rejected": 0}
    rejected: list[str] = []
    batch: list[Any] = []
    numbers: list[int] = []

    def flush(progress: Progress, task: Any) -> None:
        results = ingest_batch(runtime.factory, batch, runtime.config)
        for number, result in zip(numbers, results, strict=True):
            record(number, result, progress, task)
        batch.clear()
        numbers.clear()

    def record(number: int, result: IngestResult, progress: Progress, task: Any) -> None:
        counts[result.status] += 1
        if result.status in ("rejected", "conflict"):
            rejected.append(f"line {number} ({result.event_id or 'no event_id'}): {result.error}")
        progress.advance(task)

    with Progress(
        TextColumn("ingesting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task("ingest", total=total_lines)
        for number, item in _read_jsonl(path):
            if isinstance(item, _BadLine):
                record(number, IngestResult(None, "rejected", error=item.error), progress, task)
                continue
            batch.append(item)
            numbers.append(number)
            if len(batch) >= args.batch_size:
                flush(progress, task)
        if batch:
            flush(progress, task)
    for line in rejected[:50]:
        err_console.print(line, markup=False, highlight=False)
    if len(rejected) > 50:
        err_console.print(f"... and {len(rejected) - 50} more rejected lines")
    console.print(
        f"{counts['accepted']} accepted, {counts['duplicate']} duplicate, "
        f"{counts['rejected']} rejected"
        + (f", {counts['conflict']} conflict" if counts["conflict"] else "")
    )
    return 1 if rejected else 0


def cmd_deadletters(args: argparse.Namespace) -> int:
    from ingest.deadletters import list_dead_letters, replay_dead_letters
    from wiring.runtime import get_runtime

    runtime = get_runtime() if args.action == "list" else _runtime_with_key()
    if runtime is None:
        return 2
    if args.action == "list":
        letters = list_dead_letters(runtime.factory, include_replayed=args.all, limit=args.limit)
        table = Table("id", "received", "event_id", "error", "replayed")
        for letter in letters:
            table.add_row(
                str(letter.id),
                letter.created_at.isoformat(timespec="seconds"),
                letter.event_id or "-",
                letter.error[:120],
                letter.replay_result or "",
            )
        console.print(table)
        console.print(f"{len(letters)} dead letters")
        return 0
    results = replay_dead_letters(runtime.factory, runtime.config, ids=args.ids or None)
    for letter_id, result in results:
        console.print(
            f"{letter_id}: {result.status}" + (f" ({result.error})" if result.error else ""),
            markup=False,
        )
    return 1 if any(r.status in ("rejected", "conflict") for _, r in results) else 0


def cmd_tick(args: argparse.Namespace) -> int:
    # Without Redis the queued ids would go to an in-process queue that dies with this command.
    if not _require_broker(Settings.from_env()):
        return 2
    from worker.scheduling import build_scheduler

    runtime = _runtime_with_key()
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


def _runtime_with_key() -> Runtime | None:
    """The process's runtime, or ``None`` (after saying why) without ``NPS_SECRET_KEY``.

    Customer ids outside the customer row are stored as pseudonyms keyed by it (ledger, dead
    letters, tombstones); written under a throw-away key, they could never be found again by an
    erasure or an export. Only `demo` runs without it."""
    from wiring.runtime import get_runtime

    runtime = get_runtime()
    if not runtime.settings.secret_key:
        err_console.print(
            "NPS_SECRET_KEY is not set: customer ids are stored keyed by it, and without it "
            "erasure and export could not find them again."
        )
        return None
    return runtime


def _require_broker(settings: Settings) -> bool:
    if not settings.broker_url:
        err_console.print("NPS_BROKER_URL is not set: this process needs Redis (redis://...).")
        return False
    return True


def _seconds(text: str) -> float:
    """A positive number of seconds (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


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
    if not _require_broker(settings):
        return 2
    from worker.scheduling import build_scheduler, run_forever

    runtime = _runtime_with_key()
    if runtime is None:
        return 2
    runtime.config_holder.install_sighup_handler()
    runtime.config_holder.start_watching()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"scheduler running (config {runtime.config.version}); Ctrl-C to stop")
    with contextlib.suppress(KeyboardInterrupt):
        run_forever(
            tuned_scheduler(build_scheduler(runtime), runtime, args),
            lambda: runtime.config,
            args.interval,
            stop.is_set,
        )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if not _require_broker(settings):
        return 2
    try:
        settings.require_production_secrets()
    except SettingsError as exc:
        err_console.print(str(exc))
        return 2
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
    sys.argv = argv
    return int(dramatiq_main() or 0)  # type: ignore[no-untyped-call]


def cmd_web(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    try:
        settings.require_production_secrets()
    except SettingsError as exc:
        err_console.print(str(exc))
        return 2
    import uvicorn

    from web.app import create_app

    port = int(args.port or environ().get("PORT", "8000"))
    # proxy_headers=False: the app itself reads X-Forwarded-For, trusting only the hops in
    # NPS_TRUSTED_PROXIES; log_config=None: access lines go through our masking handler.
    uvicorn.run(create_app(), host=args.host, port=port, proxy_headers=False, log_config=None)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from demo.run import run_demo

    return run_demo(events=args.events, seed=args.seed, database=args.database, shop=args.shop)


def cmd_customer(args: argparse.Namespace) -> int:
    from ingest.subjects import erase_customer, export_customer

    runtime = _runtime_with_key()
    if runtime is None:
        return 2
    if args.action == "export":
        data = export_customer(runtime.factory, args.id)
        if data is None:
            err_console.print(f"no customer {args.id!r}", markup=False)
            return 1
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return 0
    result = erase_customer(runtime.factory, args.id, runtime.config)
    console.print(
        f"{args.id}: {result.status} {result.outcome or result.error or ''}", markup=False
    )
    return 0 if result.status != "rejected" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nps-dispatch",
        description="Post-purchase NPS surveys: consent-checked, delay-scheduled, bias-aware.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="action", required=True)
    db_sub.add_parser("upgrade", help="apply every migration").set_defaults(func=cmd_db_upgrade)

    web = sub.add_parser("web", help="the HTTP app (events, webhooks, answer page, dashboard)")
    web.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a server process binds all
    web.add_argument("--port", type=int, default=None, help="default: $PORT or 8000")
    web.set_defaults(func=cmd_web)

    worker = sub.add_parser("worker", help="dramatiq worker on $NPS_BROKER_URL")
    worker.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    worker.add_argument("--threads", type=int, default=8)
    worker.set_defaults(func=cmd_worker)

    scheduler = sub.add_parser("scheduler", help="due surveys to the queue, in a loop")
    scheduler.add_argument("--interval", type=float, default=5.0, help="seconds between passes")
    scheduler.add_argument(
        "--stuck-after",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="enqueue again a survey queued this long (default: 600)",
    )
    scheduler.add_argument(
        "--sending-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="settle from the provider a send left in 'sending' this long (default: 120)",
    )
    scheduler.add_argument(
        "--give-up-after",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="a send still unresolved this long after it began ends send_unknown (default: 3600)",
    )
    scheduler.set_defaults(func=cmd_scheduler)

    sub.add_parser("tick", help="one scheduler pass").set_defaults(func=cmd_tick)

    demo = sub.add_parser("demo", help="everything in one process with a simulated shop")
    demo.add_argument("--events", type=int, default=500, help="purchases to simulate")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--database", default=None, help="default: a fresh temporary SQLite file")
    demo.add_argument(
        "--shop",
        choices=["events", "shopify"],
        default="events",
        help="how the simulated shop talks to us: queue events or signed Shopify webhooks",
    )
    demo.set_defaults(func=cmd_demo)

    config = sub.add_parser("config", help="operator config")
    config_sub = config.add_subparsers(dest="action", required=True)
    check = config_sub.add_parser("check", help="validate a config file without running")
    check.add_argument("file", nargs="?", help="default: $NPS_CONFIG or ./nps-dispatch.toml")
    check.set_defaults(func=cmd_config_check)

    ingest = sub.add_parser("ingest", help="ingest a JSON-lines file of shop events")
    ingest.add_argument("file")
    ingest.add_argument("--batch-size", type=int, default=500)
    ingest.set_defaults(func=cmd_ingest)

    dead = sub.add_parser("deadletters", help="events that could not be taken from the queue")
    dead_sub = dead.add_subparsers(dest="action", required=True)
    dead_list = dead_sub.add_parser("list")
    dead_list.add_argument("--all", action="store_true", help="include replayed ones")
    dead_list.add_argument("--limit", type=int, default=100)
    dead_list.set_defaults(func=cmd_deadletters)
    replay = dead_sub.add_parser("replay")
    replay.add_argument("ids", nargs="*", type=int, help="default: every unreplayed letter")
    replay.set_defaults(func=cmd_deadletters)

    customer = sub.add_parser("customer", help="data subject requests (GDPR)")
    customer_sub = customer.add_subparsers(dest="action", required=True)
    for action in ("export", "erase"):
        p = customer_sub.add_parser(action)
        p.add_argument("id", help="the shop's customer id")
        p.set_defaults(func=cmd_customer)

    from cli.report import add_report_parser

    add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _setup_logging()
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
