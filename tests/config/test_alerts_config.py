"""``[alerts]``: the detractor alert targets, their validation as ``config check`` reports it,
and a config without them keeping its version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config import AlertsConfig, ConfigError, OperatorConfig, check_config_file, load_config
from config.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def problems_of(tmp_path: Path, text: str) -> tuple[str, ...]:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_both_targets_read_and_normalised(tmp_path: Path):
    path = tmp_path / "nps-dispatch.toml"
    path.write_text(
        '[alerts]\ndetractor_webhook = " https://hooks.example.com/nps?k=1 "\n'
        'detractor_email = "CX-Team@Example.COM"\n',
        encoding="utf-8",
    )
    alerts = load_config(path).alerts
    assert alerts.detractor_webhook == "https://hooks.example.com/nps?k=1"
    assert alerts.detractor_email == "CX-Team@example.com"
    assert alerts.targets() == ("webhook", "email")


def test_none_set_means_no_targets():
    assert AlertsConfig().targets() == ()
    assert OperatorConfig().alerts.targets() == ()
    assert AlertsConfig(detractor_email="cx@example.com").targets() == ("email",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'detractor_webhook = "http://hooks.example.com/nps"',
            "alerts.detractor_webhook: must use https (http is allowed for localhost only)",
        ),
        ('detractor_webhook = "ftp://hooks.example.com"', "alerts.detractor_webhook: invalid URL"),
        ('detractor_webhook = "hooks.example.com/nps"', "alerts.detractor_webhook: invalid URL"),
        (
            'detractor_webhook = "https://user:pw@hooks.example.com/"',
            "alerts.detractor_webhook: must not carry a user or password",
        ),
        ('detractor_webhook = "https://h.example.com:x/"', "alerts.detractor_webhook: invalid URL"),
        ('detractor_webhook = "https://exa mple.com/"', "alerts.detractor_webhook: invalid URL"),
        ('detractor_webhook = "https://hooks..example.com/"', "alerts.detractor_webhook: invalid"),
        ('detractor_webhook = "https://-hooks.example.com/"', "alerts.detractor_webhook: invalid"),
        ("detractor_webhook = 5", "alerts.detractor_webhook: Input should be a valid string"),
        ('detractor_email = "cx-team"', "alerts.detractor_email: invalid email address"),
        ('detractor_email = "cx@exa mple.com"', "alerts.detractor_email: invalid email address"),
        ('detractor_sms = "+4072100"', "alerts.detractor_sms: unknown key (expected one of"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, expected: str):
    problems = problems_of(tmp_path, f"[alerts]\n{text}\n")
    assert len(problems) == 1
    assert problems[0].startswith(expected), problems


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:9000/hook",
        "http://127.0.0.1/hook",
        "http://[::1]:8080/",
        "https://hooks.\u00e9xample.com/x",
        "https://10.1.2.3:8443/hook",
        "https://my_hooks.internal.example/x",
    ],
)
def test_plain_http_only_to_this_machine(url: str):
    assert AlertsConfig(detractor_webhook=url).detractor_webhook == url


def test_config_check_reports_alert_errors_and_shows_no_hook_path(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[alerts]\ndetractor_email = "nobody"\n', encoding="utf-8")
    ok, message = check_config_file(bad)
    assert not ok and "alerts.detractor_email: invalid email address" in message
    good = tmp_path / "good.toml"
    good.write_text(
        '[alerts]\ndetractor_webhook = "https://hooks.example.com/T0/B0/secretpath"\n',
        encoding="utf-8",
    )
    ok, message = check_config_file(good)
    assert ok and "alerts: detractors by webhook to hooks.example.com" in message
    assert "secretpath" not in message


def test_config_check_command_exits_1_on_a_bad_alerts_key(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[alerts]\ndetractor_webhook = "http://example.com/x"\n', encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 1
    assert "alerts.detractor_webhook: must use https" in done.stdout + done.stderr


def test_no_alerts_section_keeps_the_version_of_a_config_without_it():
    # The version is the hash of what the config means; an absent [alerts] means what it meant
    # before the section existed, so surveys are not re-planned for it.
    plain = OperatorConfig()
    assert "alerts" not in plain.canonical_json()
    with_hook = OperatorConfig(alerts=AlertsConfig(detractor_webhook="https://h.example.com/"))
    assert "alerts" in with_hook.canonical_json()
    assert with_hook.version != plain.version
    other = OperatorConfig(alerts=AlertsConfig(detractor_webhook="https://h.example.com/x"))
    assert other.version != with_hook.version


def test_the_example_file_documents_the_section():
    example = (REPO / "nps-dispatch.example.toml").read_text(encoding="utf-8")
    assert "# [alerts]" in example
    assert "# detractor_webhook = " in example and "# detractor_email = " in example
    assert load_config(REPO / "nps-dispatch.example.toml").alerts.targets() == ()


def test_signing_secret_comes_from_the_environment_only():
    settings = Settings.from_env({"NPS_ALERT_SIGNING_SECRET": "whsec-0123456789"})
    assert settings.alert_signing_secret == "whsec-0123456789"
    assert "whsec" not in repr(settings)
    assert Settings.from_env({}).alert_signing_secret is None
