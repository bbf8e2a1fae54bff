"""The process settings read from the environment."""

from __future__ import annotations

from config.settings import Settings

SECRETS = {
    "NPS_DATABASE_URL": "postgresql+psycopg://nps:db-pass-1@db.internal/nps",
    "NPS_BROKER_URL": "redis://:redis-pass-2@cache.internal:6379/0",
    "NPS_SECRET_KEY": "secret-key-3",
    "NPS_INGEST_TOKEN": "ingest-token-4",
    "NPS_DASHBOARD_PASSWORD": "dashboard-pass-5",
    "NPS_METRICS_TOKEN": "metrics-token-6",
    "SHOPIFY_WEBHOOK_SECRET": "shopify-7",
    "WOOCOMMERCE_WEBHOOK_SECRET": "woo-8",
    "NPS_ALERT_SIGNING_SECRET": "alert-9",
}


def test_no_secret_or_credentialed_url_appears_in_the_settings_repr() -> None:
    settings = Settings.from_env(SECRETS)
    shown = repr(settings)
    assert settings.dashboard_password == "dashboard-pass-5"  # read, only not shown
    for value in SECRETS.values():
        assert value not in shown
    for fragment in ("db-pass-1", "redis-pass-2"):
        assert fragment not in shown
