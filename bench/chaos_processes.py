"""The chaos run's processes: the product's own (web, workers, schedulers), a private Redis server,
and a private database, each started, killed and restarted here, and always cleaned up.

Every child runs in its own session (process group), so killing its group also kills what it
forked (dramatiq's worker processes). Each group is reported to :mod:`bench.chaos_reaper`, which
kills them and drops the database if this process dies without cleaning up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import redis
from sqlalchemy import make_url, text

from migrations.runner import upgrade
from models.session import make_engine

__all__ = ["Database", "Proc", "RedisServer", "Supervisor", "free_port"]

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


class Supervisor:
    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.procs: list[Proc] = []
        self._reaper: subprocess.Popen[bytes] | None = None
        self._reaper_in: IO[bytes] | None = None
        self._starts: dict[str, int] = {}

    # -- the reaper ------------------------------------------------------------------------------
    def start_reaper(self) -> None:
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "bench.chaos_reaper"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        self._reaper_in = self._reaper.stdin

    def tell_reaper(self, line: str) -> None:
        if self._reaper_in is not None:
            with contextlib.suppress(OSError):
                self._reaper_in.write((line + "\n").encode())
                self._reaper_in.flush()

    def dismiss_reaper(self) -> None:
        self.tell_reaper("done")
        if self._reaper_in is not None:
            with contextlib.suppress(OSError):
                self._reaper_in.close()
        if self._reaper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(timeout=10)

    # -- children --------------------------------------------------------------------------------
    def start(self, name: str, argv: list[str]) -> Proc:
        n = self._starts.get(name, 0) + 1
        self._starts[name] = n
        log = self.log_dir / f"{name}.{n}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.tell_reaper(f"group {popen.pid}")
        proc = Proc(name, argv, popen, log)
        self.procs.append(proc)
        return proc

    def signal_group(self, proc: Proc, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, sig)

    def kill(self, proc: Proc) -> None:
        """SIGKILL the process and everything it forked, as a crashed host would."""
        self.signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=10)

    def stop(self, proc: Proc, grace: float = 10.0) -> None:
        self.signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=grace)
        self.signal_group(proc, signal.SIGKILL)  # also what it forked, if still there
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=5)

    def stop_all(self, grace: float = 8.0) -> None:
        for proc in self.procs:
            self.signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for proc in self.procs:
            self.signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)


class RedisServer:
    """A private redis-server on a free loopback port, with an append-only file so that a
    restart (as in a deployment or a failover) keeps what was queued."""

    def __init__(self, supervisor: Supervisor, data_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.binary = binary
        self.supervisor = supervisor
        self.data_dir = data_dir
        self.port = 0
        self.proc: Proc | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _argv(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--daemonize", "no",
        ]  # fmt: skip

    def start(self) -> None:
        for _ in range(5):
            if not self.port:
                self.port = free_port()
            self.proc = self.supervisor.start("redis", self._argv())
            if self._ping(timeout=10.0):
                return
            self.supervisor.kill(self.proc)
            self.port = 0
        raise RuntimeError("could not start redis-server")

    def _ping(self, timeout: float) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and not self.proc.alive:
                    return False
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return True
                time.sleep(0.1)
            return False
        finally:
            client.close()

    def restart(self, down_seconds: float) -> None:
        """Stop (SIGTERM: Redis writes its file), stay down a while, start on the same port."""
        assert self.proc is not None
        self.supervisor.stop(self.proc, grace=15.0)
        time.sleep(down_seconds)
        self.proc = self.supervisor.start("redis", self._argv())
        if not self._ping(timeout=15.0):
            raise RuntimeError("redis-server did not come back after its restart")
        self.restarts += 1


class Database:
    """A database of its own on the PostgreSQL server of ``base_url``, built by the migrations."""

    def __init__(self, base_url: str, name: str) -> None:
        base = make_url(base_url)
        self.name = name
        self.url = base.set(database=name).render_as_string(hide_password=False)
        self.admin_url = base.set(database="postgres").render_as_string(hide_password=False)

    def _admin(self, statement: str) -> None:
        engine = make_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(statement))
        finally:
            engine.dispose()

    def _quoted(self) -> str:
        return '"' + self.name.replace('"', '""') + '"'

    def create(self) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {self._quoted()} WITH (FORCE)")
        self._admin(f"CREATE DATABASE {self._quoted()}")
        engine = make_engine(self.url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()

    def drop(self) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {self._quoted()} WITH (FORCE)")
