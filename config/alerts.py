"""``[alerts]``: where each new detractor answer is reported, by a signed webhook and/or an email.

Both keys are optional; with neither set no alert is ever recorded or sent. The webhook URL must
be ``https``, or ``http`` to this machine only (``localhost``, ``127.0.0.1``, ``::1``): an alert
carries the customer's comment, which must not cross a network in clear. The email address is
checked with email-validator (syntax only, no DNS lookup). The signing secret of the webhook is
not part of this file: it comes from the environment (``NPS_ALERT_SIGNING_SECRET``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from config.values import ConfigModel

__all__ = ["AlertTarget", "AlertsConfig"]

AlertTarget = Literal["webhook", "email"]
_LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1"})
#: One label of a host name (an underscore is tolerated: some internal names have one).
_LABEL: Final = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def _valid_host(host: str) -> bool:
    """An IP address, or a host name whose labels (after IDNA encoding) are well formed."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = ascii_host.removesuffix(".").split(".")
    return len(ascii_host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def _webhook_url(value: object) -> object:
    if not isinstance(value, str):
        return value  # the str type reports it
    url = value.strip()
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise PydanticCustomError("url", "invalid URL {value}", {"value": repr(value)}) from None
    if parts.scheme not in ("https", "http") or not host or not _valid_host(host):
        raise PydanticCustomError(
            "url",
            "invalid URL {value} (use https://host/path)",
            {"value": repr(value)},
        )
    if parts.scheme == "http" and host not in _LOOPBACK:
        raise PydanticCustomError(
            "url",
            "must use https (http is allowed for localhost only): alerts carry comments",
        )
    if parts.username is not None or parts.password is not None:
        raise PydanticCustomError(
            "url", "must not carry a user or password (the alerts are signed instead)"
        )
    if parts.fragment:
        raise PydanticCustomError("url", "must not have a #fragment")
    return url


def _email(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise PydanticCustomError(
            "email", "invalid email address ({reason})", {"reason": str(exc).rstrip(".")}
        ) from None
    return checked.normalized


WebhookUrl = Annotated[str, BeforeValidator(_webhook_url)]
AlertEmail = Annotated[str, BeforeValidator(_email)]


class AlertsConfig(ConfigModel):
    """The targets of detractor alerts; ``AlertsConfig()`` (none set) sends none."""

    detractor_webhook: WebhookUrl | None = None
    detractor_email: AlertEmail | None = None

    def targets(self) -> tuple[AlertTarget, ...]:
        """The configured targets, in a fixed order (an empty tuple: no alerts)."""
        out: list[AlertTarget] = []
        if self.detractor_webhook is not None:
            out.append("webhook")
        if self.detractor_email is not None:
            out.append("email")
        return tuple(out)

    def summary(self) -> str:
        """One line for ``config check``: the webhook's host only (a hook's path is often its
        secret), and whether email is on."""
        if not self.targets():
            return "alerts: none"
        parts = []
        if self.detractor_webhook is not None:
            parts.append(f"webhook to {urlsplit(self.detractor_webhook).hostname}")
        if self.detractor_email is not None:
            parts.append("email")
        return f"alerts: detractors by {' and '.join(parts)}"
