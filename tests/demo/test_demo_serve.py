"""`nps-dispatch demo` ends by serving the dashboard with the password it printed, until Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from demo.serve import database_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_demo_serves_the_dashboard_with_the_printed_password_until_ctrl_c(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NPS_", "TWILIO", "SENDGRID"))}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "demo",
            "--events",
            "40",
            "--database",
            str(tmp_path / "demo.db"),
            "--port",
            str(port),
        ],
        env={**env, "COLUMNS": "160"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        output = ""
        deadline = time.monotonic() + 240
        password = None
        assert proc.stdout is not None
        while time.monotonic() < deadline and password is None:
            line = proc.stdout.readline()
            if not line:
                break
            output += line
            found = re.search(r"password (\S+)", line)
            if found and "/dashboard" in output:
                password = found.group(1)
        assert password, output[-3000:]
        assert f"http://localhost:{port}/dashboard" in output
        page = None
        while time.monotonic() < deadline:
            try:
                page = httpx.get(
                    f"http://127.0.0.1:{port}/dashboard", auth=("operator", password), timeout=60
                )
                break
            except httpx.ConnectError:
                time.sleep(0.2)
        assert page is not None and page.status_code == 200, page and page.text[:500]
        refused = httpx.get(f"http://127.0.0.1:{port}/dashboard", auth=("operator", "wrong"))
        assert refused.status_code == 401
        assert not list(tmp_path.glob("*password*"))
        assert password not in (tmp_path / "demo.db").read_bytes().decode("latin-1")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, proc.stderr.read()[-3000:] if proc.stderr else ""


def test_a_demo_database_is_a_url_or_a_plain_sqlite_path(tmp_path: Path):
    assert database_url(None, "sqlite:///x.db") == "sqlite:///x.db"
    assert database_url("postgresql://h/db", "d") == "postgresql://h/db"
    assert database_url(str(tmp_path / "d.db"), "d") == f"sqlite:///{tmp_path / 'd.db'}"
