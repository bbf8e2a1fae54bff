"""Secrets and wiring from the environment (the README lists the variables). Secrets come from
nowhere else, and nothing else in the code reads the environment: it asks :func:`environ`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

#: The embedded default: a SQLite file in the working directory.
DEFAULT_DATABASE_URL = "sqlite:///./nps-dispatch.db"


def use_in_process_broker() -> None:
    """Forget ``NPS_BROKER_URL`` for this process (the demo runs everything in one process,
    whatever the shell exports); to be called before ``worker.broker`` is imported."""
    os.environ.pop("NPS_BROKER_URL", None)


def environ() -> Mapping[str, str]:
    """The process environment, where every setting comes from (tests hand
    :meth:`Settings.from_env` a mapping of their own instead)."""
    return os.environ


class SettingsError(RuntimeError):
    pass


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    """``env[name]`` as a positive integer; unset or empty: ``None``."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise SettingsError(f"{name} must be a positive whole number, not {raw!r}")
    return int(raw)


#: Threads per worker process that every queue shares (``nps-dispatch worker --threads``).
WORKER_THREADS = 8
#: The events queue's own threads per worker process (``--event-threads``,
#: ``worker.event_threads``). Chosen by measure (``bench.ingest_queue``, README "Performance"):
#: on two cores, groups grew and CPU per event fell up to 48; 64 did no better.
WORKER_EVENT_THREADS = 48
#: More would only add threads waiting for the same groups.
WORKER_EVENT_THREADS_MAX = 256
#: How ``nps-dispatch worker`` tells the worker processes dramatiq starts their event threads.
EVENT_THREADS_VARIABLE = "NPS_WORKER_EVENT_THREADS"


def export_event_threads(count: int) -> None:
    """Set :data:`EVENT_THREADS_VARIABLE` for the worker processes this process starts."""
    os.environ[EVENT_THREADS_VARIABLE] = str(count)


def event_threads() -> int:
    """The events queue's own threads in this worker process: :data:`EVENT_THREADS_VARIABLE`,
    0 (none: it shares the others) when unset."""
    raw = (environ().get(EVENT_THREADS_VARIABLE) or "").strip()
    if not raw:
        return 0
    if not (raw.isascii() and raw.isdigit()) or int(raw) > WORKER_EVENT_THREADS_MAX:
        raise SettingsError(
            f"{EVENT_THREADS_VARIABLE} must be a whole number from 0 to "
            f"{WORKER_EVENT_THREADS_MAX}, not {raw!r}"
        )
    return int(raw)


def export_metrics_dir(path: str) -> None:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for this process and the processes it starts; to be
    called before prometheus_client is imported, which reads it once."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


@dataclass(frozen=True)
class Settings:
    # URLs may carry a password: kept out of the repr, like every secret below.
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    broker_url: str | None = field(default=None, repr=False)
    config_path: str = "./nps-dispatch.toml"
    public_base_url: str = "http://localhost:8000"
    secret_key: str | None = field(default=None, repr=False)
    ingest_token: str | None = field(default=None, repr=False)
    dashboard_password: str | None = field(default=None, repr=False)
    # Bearer token for GET /metrics, besides basic auth.
    metrics_token: str | None = field(default=None, repr=False)
    trusted_proxies: tuple[str, ...] = ()  # addresses/networks whose X-Forwarded-For is believed
    # Unset: POST /webhooks/shopify (and /webhooks/woocommerce) answers 404.
    shopify_webhook_secret: str | None = field(default=None, repr=False)
    woocommerce_webhook_secret: str | None = field(default=None, repr=False)
    # Signs detractor alert webhooks (X-NPS-Signature); unset: webhook alerts are not sent.
    alert_signing_secret: str | None = field(default=None, repr=False)
    # Where prometheus_client keeps every process's counters (its multiprocess mode), so that
    # one scrape sums the processes of a host; unset: each process counts in its own memory.
    prometheus_multiproc_dir: str | None = None
    metrics_port: int | None = None  # the worker's and scheduler's metrics HTTP port; unset: off
    metrics_host: str = "127.0.0.1"  # the address that port binds to
    web_concurrency: int = 1  # uvicorn worker processes of `nps-dispatch web`
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = dict(environ() if env is None else env)
        return cls(
            database_url=env.get("NPS_DATABASE_URL") or DEFAULT_DATABASE_URL,
            broker_url=env.get("NPS_BROKER_URL") or None,
            config_path=env.get("NPS_CONFIG") or "./nps-dispatch.toml",
            public_base_url=(env.get("NPS_PUBLIC_BASE_URL") or "http://localhost:8000").rstrip("/"),
            secret_key=env.get("NPS_SECRET_KEY") or None,
            ingest_token=env.get("NPS_INGEST_TOKEN") or None,
            dashboard_password=env.get("NPS_DASHBOARD_PASSWORD") or None,
            metrics_token=env.get("NPS_METRICS_TOKEN") or None,
            trusted_proxies=tuple(
                item.strip()
                for item in env.get("NPS_TRUSTED_PROXIES", "").split(",")
                if item.strip()
            ),
            shopify_webhook_secret=env.get("SHOPIFY_WEBHOOK_SECRET") or None,
            woocommerce_webhook_secret=env.get("WOOCOMMERCE_WEBHOOK_SECRET") or None,
            alert_signing_secret=env.get("NPS_ALERT_SIGNING_SECRET") or None,
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
            metrics_port=_positive_int(env, "NPS_METRICS_PORT"),
            metrics_host=env.get("NPS_METRICS_HOST") or "127.0.0.1",
            web_concurrency=_positive_int(env, "WEB_CONCURRENCY") or 1,
            env=env,
        )

    def require_production_secrets(self) -> None:
        """Outside `demo`, running without these would leave a public route unprotected."""
        missing = [
            name
            for name, value in (
                ("NPS_SECRET_KEY", self.secret_key),
                ("NPS_INGEST_TOKEN", self.ingest_token),
                ("NPS_DASHBOARD_PASSWORD", self.dashboard_password),
            )
            if not value
        ]
        if missing:
            raise SettingsError(f"missing required environment variables: {', '.join(missing)}")
