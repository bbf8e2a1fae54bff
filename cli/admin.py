"""Setting up and trying out: `db upgrade`, `config check [FILE]` and `demo`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.common import console, err_console, positive_int


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from config.settings import Settings
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


def cmd_demo(args: argparse.Namespace) -> int:
    from demo.run import run_demo

    return run_demo(
        events=args.events,
        seed=args.seed,
        database=args.database,
        shop=args.shop,
        serve=not args.no_serve,
        host=args.host,
        port=args.port,
    )


def add_parsers(sub: Any) -> None:
    """Register `db`, `config` and `demo` on an ``add_subparsers()`` object."""
    db = sub.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="action", required=True)
    db_sub.add_parser("upgrade", help="apply every migration").set_defaults(func=cmd_db_upgrade)

    config = sub.add_parser("config", help="operator config")
    config_sub = config.add_subparsers(dest="action", required=True)
    check = config_sub.add_parser("check", help="validate a config file without running")
    check.add_argument("file", nargs="?", help="default: $NPS_CONFIG or ./nps-dispatch.toml")
    check.set_defaults(func=cmd_config_check)

    demo = sub.add_parser(
        "demo",
        help="everything in one process with a simulated shop, then the dashboard",
        description="A simulated shop and its customers through the real ingest, scheduler, "
        "sender and HTTP routes; prints the report, then serves the dashboard until Ctrl-C.",
    )
    demo.add_argument("--events", type=positive_int, default=500, help="purchases to simulate")
    demo.add_argument("--seed", type=int, default=7, help="seed of the simulation")
    demo.add_argument(
        "--database",
        default=None,
        metavar="PATH_OR_URL",
        help="a SQLite file path or a SQLAlchemy URL (default: a fresh temporary SQLite file)",
    )
    demo.add_argument(
        "--shop",
        choices=["events", "shopify"],
        default="events",
        help="how the simulated shop talks to us: queue events or signed Shopify webhooks",
    )
    demo.add_argument(
        "--no-serve",
        action="store_true",
        help="stop after the report instead of serving the dashboard",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address the dashboard listens on")
    demo.add_argument("--port", type=int, default=8000, help="port the dashboard listens on")
    demo.set_defaults(func=cmd_demo)
