"""The whole operator config: :class:`OperatorConfig` gathers the sections of the TOML file
(``nps-dispatch.example.toml`` shows every key with its default).

:attr:`OperatorConfig.version` is a short hash of the *meaning* of a config: comments, layout,
key order and equivalent spellings (``"24h"`` / ``"1d"``) do not change it; a value does.
:attr:`OperatorConfig.schedule_version` is the same over the ``[schedule]`` section alone, the
only one a survey's due time depends on: surveys record it, and the scheduler re-plans those
planned under another one (an edit of the rate limits or the alerts re-plans nothing).
:func:`default_config` is the built-in defaults, used when there is no file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Self

from pydantic import PrivateAttr

from config.alerts import AlertsConfig
from config.contact import ContactConfig, RateLimits
from config.platforms import ShopifyConfig, WooCommerceConfig
from config.schedule import ScheduleConfig
from config.survey import SurveyConfig
from config.values import ConfigModel, format_clock, format_duration

__all__ = ["OperatorConfig", "default_config"]

#: Sections that plan nothing, left out of the version while at their defaults.
_OPTIONAL_SECTIONS = ("alerts",)


class OperatorConfig(ConfigModel):
    """The validated operator config. ``OperatorConfig()`` is the built-in defaults."""

    survey: SurveyConfig = SurveyConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    contact: ContactConfig = ContactConfig()
    rate_limits: RateLimits = RateLimits()
    shopify: ShopifyConfig = ShopifyConfig()
    woocommerce: WooCommerceConfig = WooCommerceConfig()
    alerts: AlertsConfig = AlertsConfig()

    _version: str = PrivateAttr(default="")
    _schedule_version: str = PrivateAttr(default="")

    def model_post_init(self, context: Any, /) -> None:
        self._set_versions()

    def _set_versions(self) -> None:
        self._version = _digest(self.canonical_json())
        self._schedule_version = _digest(
            json.dumps(
                self.schedule.model_dump(mode="json"),
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=True,
            )
        )

    def canonical_json(self) -> str:
        """The meaning of this config as one JSON text (sorted keys, canonical spellings).

        A section of :data:`_OPTIONAL_SECTIONS` left at its defaults is not part of it, so adding
        such a section to the model does not change the version of a config that leaves it out
        (a changed version re-plans every survey not yet queued)."""
        meaning = self.model_dump(mode="json")
        for name in _OPTIONAL_SECTIONS:
            if getattr(self, name) == type(getattr(self, name))():
                meaning.pop(name, None)
        return json.dumps(meaning, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @property
    def version(self) -> str:
        """12 hex digits of sha256 over :meth:`canonical_json`."""
        return self._version

    @property
    def schedule_version(self) -> str:
        """12 hex digits of sha256 over the ``[schedule]`` section's meaning: what a survey's
        plan depends on (delay, anchor, rules, arms, jitter, quiet hours, days, default zone)."""
        return self._schedule_version

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied._set_versions()
        return copied

    def summary(self) -> str:
        """A few lines an operator can read at a glance."""
        s, sc, c = self.survey, self.schedule, self.contact
        quiet = (
            f"{format_clock(sc.quiet_hours.start)}-{format_clock(sc.quiet_hours.end)}"
            if sc.quiet_hours.enabled
            else "none"
        )
        lines = [
            f"survey: {s.shop_name!r}, window {format_duration(s.response_window)}, "
            f"{s.reminder.max} reminder(s) after {format_duration(s.reminder.after)}",
            f"schedule: {format_duration(sc.delay)} after {sc.anchor} "
            f"(timeout {format_duration(sc.anchor_timeout)}), jitter {format_duration(sc.jitter)}, "
            f"quiet {quiet}, days {','.join(sc.send_days)}, default zone {sc.default_timezone}",
            f"  {len(sc.rules)} rule(s), {len(sc.arms)} arm(s)"
            + (f": {', '.join(a.name for a in sc.arms)}" if sc.arms else ""),
            f"contact: {' > '.join(c.channels)}, fallback {'on' if c.fallback else 'off'}, "
            f"cap {format_duration(c.frequency_cap)}, sample {c.sample_rate:g}",
            f"rate limits: email {self.rate_limits.email:g}/s, sms {self.rate_limits.sms:g}/s",
            self.alerts.summary(),
        ]
        return "\n".join(lines)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@lru_cache(maxsize=1)
def default_config() -> OperatorConfig:
    """The built-in defaults (the values in ``nps-dispatch.example.toml``, no rules, no arms)."""
    return OperatorConfig()
