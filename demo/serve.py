"""The end of `nps-dispatch demo`: the dashboard over the demo's data, served until Ctrl-C.

The password is ``NPS_DASHBOARD_PASSWORD`` when set, else a new random one for this run; it is
printed once with the address and written nowhere else.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from wiring.runtime import Runtime

#: HTTP basic auth takes any user name with the operators' password; this is the one we print.
DEMO_USER = "operator"


def dashboard_password(env: Mapping[str, str]) -> str:
    """The operator's own password when exported, else a fresh one for this run."""
    return env.get("NPS_DASHBOARD_PASSWORD") or secrets.token_urlsafe(12)


def database_url(value: str | None, default: str) -> str:
    """``--database``: a SQLAlchemy URL as given, a plain path as a SQLite file."""
    if not value:
        return default
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def serve_dashboard(
    console: Console, runtime: Runtime, password: str, host: str, port: int
) -> None:
    """Serve the web app on ``host:port`` until Ctrl-C (or SIGTERM)."""
    import uvicorn

    from web.app import create_app

    shown_host = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host  # noqa: S104
    url = f"http://{shown_host}:{port}/dashboard"
    console.print(
        Panel.fit(
            f"[bold]Dashboard:[/] {url}\n"
            f"user [bold]{DEMO_USER}[/], password [bold]{password}[/]\n"
            "Ctrl-C to stop.",
            title="the demo's data, served",
            border_style="green",
        ),
        soft_wrap=True,
    )
    config = uvicorn.Config(
        create_app(runtime),
        host=host,
        port=port,
        proxy_headers=False,
        log_level="warning",
        log_config=None,
    )
    # uvicorn shuts down gracefully on Ctrl-C, then hands the interrupt on.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
    console.print("dashboard stopped")
