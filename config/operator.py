"""The operator config (CONTRACT §2): a TOML file, validated into frozen pydantic models.

- :func:`load_config` reads one file; ``None`` or an absent file gives the built-in defaults
  (the values of CONTRACT §2, with no rules and no arms). Every problem of a bad file is reported at
  once, each as ``key.path: reason``, in a :class:`ConfigError`.
- :class:`ConfigHolder` keeps the last good config of a long-running process and reloads it on
  SIGHUP and when the file changes (polled), keeping the old config when the new file is bad.
- :attr:`OperatorConfig.version` is a short hash of the *meaning* of a config: comments, layout,
  key order and equivalent spellings (``"24h"`` / ``"1d"``) do not change it; a value does.
- :func:`check_config_file` backs ``nps-dispatch config check [FILE]``.

Durations are strings of whole units in the order w, d, h, m, s: ``"90s"``, ``"15m"``, ``"6h"``,
``"3d"``, ``"1w"``, also ``"1d12h"``. No sign, no fractions, lowercase units.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
import logging
import os
import re
import signal
import threading
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import time, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Literal, Self, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "WEEKDAYS",
    "AnchorKind",
    "Arm",
    "Bands",
    "ChannelName",
    "ConfigError",
    "ConfigHolder",
    "ContactConfig",
    "Duration",
    "Exclude",
    "Followup",
    "OperatorConfig",
    "QuietHours",
    "RateLimits",
    "ReloadResult",
    "Reminder",
    "Rule",
    "RuleMatch",
    "ScheduleConfig",
    "ShopifyConfig",
    "SurveyConfig",
    "Weekday",
    "WooCommerceConfig",
    "check_config_file",
    "config_path_from_env",
    "default_config",
    "format_duration",
    "load_config",
    "parse_duration",
]

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "./nps-dispatch.toml"

AnchorKind = Literal["purchase", "fulfilled", "delivered"]


class ChannelName(enum.StrEnum):
    """The two channels a survey goes by; the one type for them everywhere (a plain string
    compares equal to its member, so TOML values and database columns need no conversion)."""

    email = "email"
    sms = "sms"


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# --------------------------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------------------------

_DURATION_HINT = "use 90s, 15m, 6h or 3d"
_DURATION_RE = re.compile(
    r"^(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$"
)
_UNIT_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"6h"``, ``"3d"``, ``"1w"``, ``"1d12h"`` -> timedelta.

    Raises ``ValueError`` with a message an operator can act on.
    """
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: must not be negative ({_DURATION_HINT})")
    match = _DURATION_RE.match(stripped)
    if not stripped or match is None:
        raise ValueError(f"invalid duration {text!r} ({_DURATION_HINT})")
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for unit, n in match.groupdict().items() if n)
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too long") from None


def format_duration(value: timedelta) -> str:
    """The canonical spelling of a duration: the largest of d/h/m/s that divides it exactly."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _validate_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise PydanticCustomError("duration", "invalid duration: must not be negative")
        if value.microseconds:
            raise PydanticCustomError("duration", "invalid duration: whole seconds only")
        return value
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise PydanticCustomError("duration", str(exc)) from None
    raise PydanticCustomError(
        "duration",
        "invalid duration {value} (a quoted string; {hint})",
        {"value": repr(value), "hint": _DURATION_HINT},
    )


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise PydanticCustomError("duration", "must be longer than 0s")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(_validate_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A non-negative whole-second duration, read from ``"90s"`` / ``"15m"`` / ``"6h"`` / ``"3d"``."""

PositiveDuration = Annotated[Duration, AfterValidator(_positive)]

# --------------------------------------------------------------------------------------------
# Small value types
# --------------------------------------------------------------------------------------------

_CLOCK_RE = re.compile(r"^(\d{1,2}):(\d{2})$")


def _validate_clock(value: object) -> time:
    if isinstance(value, time):  # a TOML local time: start = 20:00:00
        if value.tzinfo is not None:
            raise PydanticCustomError("clock", "a local time without an offset")
        return value.replace(microsecond=0)
    if isinstance(value, str):
        match = _CLOCK_RE.match(value.strip())
        if match is not None:
            hour, minute = int(match[1]), int(match[2])
            if hour < 24 and minute < 60:
                return time(hour, minute)
    raise PydanticCustomError(
        "clock", "invalid time {value} (use HH:MM, 00:00 to 23:59)", {"value": repr(value)}
    )


def _format_clock(value: time) -> str:
    return value.strftime("%H:%M:%S" if value.second else "%H:%M")


Clock = Annotated[
    time,
    BeforeValidator(_validate_clock),
    PlainSerializer(_format_clock, return_type=str, when_used="json"),
]


def _validate_amount(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise PydanticCustomError(
            "amount",
            'invalid amount {value} (use a decimal string like "10.50")',
            {"value": repr(value)},
        )
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise PydanticCustomError(
            "amount",
            'invalid amount {value} (use a decimal string like "10.50")',
            {"value": repr(value)},
        ) from None
    if not amount.is_finite() or amount < 0:
        raise PydanticCustomError("amount", "must be a finite amount, 0 or more")
    return amount


def _format_amount(value: Decimal) -> str:
    return format((value + 0).normalize(), "f")


Amount = Annotated[
    Decimal,
    BeforeValidator(_validate_amount),
    PlainSerializer(_format_amount, return_type=str, when_used="json"),
]


def _validate_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise PydanticCustomError(
            "timezone",
            "unknown time zone {value} (use an IANA name like Europe/Berlin)",
            {"value": repr(value)},
        ) from None
    return value


def _cross(problems: list[tuple[str, str]]) -> PydanticCustomError:
    """An error carrying ``(relative key path, reason)`` problems; see ``_format_errors``."""
    summary = "; ".join(f"{path}: {reason}" if path else reason for path, reason in problems)
    return PydanticCustomError(
        "cross_field", "{summary}", {"summary": summary, "problems": [list(p) for p in problems]}
    )


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------
# [survey]
# --------------------------------------------------------------------------------------------

BandName = Literal["detractor", "passive", "promoter"]


class Reminder(_Model):
    after: PositiveDuration = timedelta(days=3)
    max: int = Field(default=1, ge=0, le=10)


class Bands(_Model):
    """Score bands: they cover 0..10 exactly once, in the order detractor, passive, promoter."""

    detractor: tuple[int, int] = (0, 6)
    passive: tuple[int, int] = (7, 8)
    promoter: tuple[int, int] = (9, 10)

    @model_validator(mode="after")
    def _partition(self) -> Self:
        problems: list[tuple[str, str]] = []
        named: list[tuple[BandName, tuple[int, int]]] = [
            ("detractor", self.detractor),
            ("passive", self.passive),
            ("promoter", self.promoter),
        ]
        for name, (low, high) in named:
            if not (0 <= low <= 10 and 0 <= high <= 10):
                problems.append((name, f"[{low}, {high}] is outside the scores 0..10"))
            elif low > high:
                problems.append((name, f"starts at {low} after it ends at {high}"))
        if problems:
            raise _cross(problems)
        if self.detractor[0] != 0:
            problems.append(("detractor", f"must start at 0, not {self.detractor[0]}"))
        for (before, (_, end)), (after, (start, _)) in itertools.pairwise(named):
            if start <= end:
                problems.append(
                    (after, f"overlaps {before}: {before} ends at {end}, {after} starts at {start}")
                )
            elif start > end + 1:
                gap = f"{end + 1}" if start == end + 2 else f"{end + 1}..{start - 1}"
                problems.append((after, f"leaves a gap after {before}: {gap} in no band"))
        if self.promoter[1] != 10:
            problems.append(("promoter", f"must end at 10, not {self.promoter[1]}"))
        if problems:
            raise _cross(problems)
        return self

    def band_of(self, score: int) -> BandName:
        """The band of a 0..10 score."""
        if self.detractor[0] <= score <= self.detractor[1]:
            return "detractor"
        if self.passive[0] <= score <= self.passive[1]:
            return "passive"
        if self.promoter[0] <= score <= self.promoter[1]:
            return "promoter"
        raise ValueError(f"score {score} is outside 0..10")


class Followup(_Model):
    promoter: str = Field(default="What did you like most?", min_length=1)
    passive: str = Field(default="What would make it a 10?", min_length=1)
    detractor: str = Field(default="What should we improve?", min_length=1)

    def question_for(self, band: BandName) -> str:
        return str(getattr(self, band))


class SurveyConfig(_Model):
    shop_name: str = Field(default="Example Shop", min_length=1)
    response_window: PositiveDuration = timedelta(days=14)
    reminder: Reminder = Reminder()
    bands: Bands = Bands()
    followup: Followup = Followup()

    @model_validator(mode="after")
    def _reminder_inside_window(self) -> Self:
        if self.reminder.max > 0 and self.reminder.after >= self.response_window:
            raise _cross(
                [
                    (
                        "reminder.after",
                        f"must be shorter than survey.response_window "
                        f"({format_duration(self.response_window)}), or no reminder is ever sent",
                    )
                ]
            )
        return self


# --------------------------------------------------------------------------------------------
# [schedule]
# --------------------------------------------------------------------------------------------


class QuietHours(_Model):
    """Local hours with no sending, ``[start, end)``; wraps midnight when ``start > end``;
    ``start == end`` means no quiet hours."""

    start: Clock = time(20, 0)
    end: Clock = time(9, 0)

    @property
    def enabled(self) -> bool:
        return self.start != self.end

    @property
    def wraps_midnight(self) -> bool:
        return self.start > self.end

    def contains(self, moment: time) -> bool:
        """Whether a local wall-clock time falls in the quiet hours."""
        moment = moment.replace(tzinfo=None)
        if not self.enabled:
            return False
        if self.wraps_midnight:
            return moment >= self.start or moment < self.end
        return self.start <= moment < self.end


def _as_str_tuple(value: object) -> object:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and not value:
        raise PydanticCustomError("empty", "must not be empty")
    return value


def _strip_nonempty(value: str) -> str:
    value = value.strip()
    if not value:
        raise PydanticCustomError("empty", "must not be empty")
    return value


_MatchValues = Annotated[
    tuple[Annotated[str, AfterValidator(_strip_nonempty)], ...], BeforeValidator(_as_str_tuple)
]


def _upper_countries(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    for code in values:
        if not re.fullmatch(r"[A-Za-z]{2}", code):
            raise PydanticCustomError(
                "country",
                "invalid country {value} (use an ISO 3166 code like DE)",
                {"value": repr(code)},
            )
    return tuple(code.upper() for code in values)


class RuleMatch(_Model):
    """What a rule matches; each key is a value or a list of values (any of them). Every key given
    must match; comparisons ignore case. A survey attribute that is unknown matches nothing."""

    category: _MatchValues | None = None
    channel: tuple[ChannelName, ...] | None = None
    country: Annotated[_MatchValues | None, AfterValidator(_upper_countries)] = None
    sales_channel: _MatchValues | None = None

    @field_validator("channel", mode="before")
    @classmethod
    def _channel_list(cls, value: object) -> object:
        return _as_str_tuple(value)

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if all(getattr(self, key) is None for key in type(self).model_fields):
            raise PydanticCustomError(
                "empty_match",
                "needs at least one of category, channel, country, sales_channel",
            )
        return self

    def matches(
        self,
        *,
        category: str | None,
        channel: str | None,
        country: str | None,
        sales_channel: str | None,
    ) -> bool:
        given = {
            "category": category,
            "channel": channel,
            "country": country,
            "sales_channel": sales_channel,
        }
        for key, actual in given.items():
            wanted: tuple[str, ...] | None = getattr(self, key)
            if wanted is None:
                continue
            if actual is None or actual.strip().casefold() not in {w.casefold() for w in wanted}:
                return False
        return True


class Rule(_Model):
    match: RuleMatch
    delay: Duration


class Arm(_Model):
    """One arm of a randomised delay experiment."""

    name: Annotated[str, AfterValidator(_strip_nonempty)]
    delay: Duration
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)


def _send_days(value: object) -> object:
    if isinstance(value, list | tuple):
        days = [d.strip().lower() if isinstance(d, str) else d for d in value]
        if not days:
            raise PydanticCustomError("empty", "must name at least one day")
        seen = [d for i, d in enumerate(days) if d in days[:i]]
        if seen:
            raise PydanticCustomError(
                "duplicate", "{value} is listed twice", {"value": repr(seen[0])}
            )
        known = [d for d in days if d in WEEKDAYS]
        if len(known) == len(days):
            return tuple(d for d in WEEKDAYS if d in days)  # canonical week order
        return tuple(days)  # let the Literal check name the bad day
    return value


class ScheduleConfig(_Model):
    anchor: AnchorKind = "delivered"
    anchor_timeout: PositiveDuration = timedelta(days=10)
    delay: Duration = timedelta(days=3)
    quiet_hours: QuietHours = QuietHours()
    send_days: Annotated[tuple[Weekday, ...], BeforeValidator(_send_days)] = (
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
        "sat",
    )
    jitter: Duration = timedelta(hours=2)
    default_timezone: Annotated[str, AfterValidator(_validate_zone)] = "Europe/Berlin"
    rules: tuple[Rule, ...] = ()
    arms: tuple[Arm, ...] = ()

    @model_validator(mode="after")
    def _unique_arms(self) -> Self:
        problems: list[tuple[str, str]] = []
        first: dict[str, int] = {}
        for index, arm in enumerate(self.arms):
            if arm.name in first:
                problems.append(
                    (
                        f"arms[{index}].name",
                        f"duplicate arm name {arm.name!r} (also arms[{first[arm.name]}])",
                    )
                )
            first.setdefault(arm.name, index)
        if problems:
            raise _cross(problems)
        return self

    @property
    def weekdays(self) -> frozenset[int]:
        """Send days as ``date.weekday()`` numbers (Monday = 0)."""
        return frozenset(WEEKDAYS.index(day) for day in self.send_days)


# --------------------------------------------------------------------------------------------
# [contact], [rate_limits]
# --------------------------------------------------------------------------------------------


class Exclude(_Model):
    test_orders: bool = True
    min_total: Amount = Decimal("0")


def _channels(value: object) -> object:
    if isinstance(value, list | tuple):
        if not value:
            raise PydanticCustomError("empty", "must name at least one channel")
        seen = [c for i, c in enumerate(value) if c in value[:i]]
        if seen:
            raise PydanticCustomError(
                "duplicate", "{value} is listed twice", {"value": repr(seen[0])}
            )
    return value


class ContactConfig(_Model):
    channels: Annotated[tuple[ChannelName, ...], BeforeValidator(_channels)] = (
        ChannelName.email,
        ChannelName.sms,
    )
    fallback: bool = True
    frequency_cap: Duration = timedelta(days=90)
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    exclude: Exclude = Exclude()


class RateLimits(_Model):
    """Messages per second each channel may send (enforced by the channels)."""

    email: float = Field(default=50.0, gt=0, allow_inf_nan=False)
    sms: float = Field(default=10.0, gt=0, allow_inf_nan=False)

    def for_channel(self, channel: str) -> float | None:
        value = getattr(self, channel, None)
        return float(value) if isinstance(value, float | int) else None


# --------------------------------------------------------------------------------------------
# [shopify], [woocommerce]: the shop platforms' webhooks
# --------------------------------------------------------------------------------------------

ShopifyPurchaseTopic = Literal["orders/paid", "orders/create"]
ShopifyConsentState = Literal[
    "subscribed", "pending", "not_subscribed", "unsubscribed", "redacted", "invalid"
]
# A customer in one of these states has said no, or nothing, or their consent was erased: an
# operator cannot make it count as a yes.
_NEVER_CONSENT = ("not_subscribed", "unsubscribed", "redacted", "invalid")
WooCommerceStatus = Literal["pending", "processing", "on-hold", "completed"]


def _unique_nonempty(value: object) -> object:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        if not value:
            raise PydanticCustomError("empty", "must not be empty")
        seen = [v for i, v in enumerate(value) if v in value[:i]]
        if seen:
            raise PydanticCustomError(
                "duplicate", "{value} is listed twice", {"value": repr(seen[0])}
            )
        return tuple(value)
    return value


def _counts_as_consent(states: tuple[str, ...]) -> tuple[str, ...]:
    refused = [state for state in states if state in _NEVER_CONSENT]
    if refused:
        raise PydanticCustomError(
            "consent_state",
            "{value} cannot count as consent (it records a refusal, no answer, or an erasure)",
            {"value": repr(refused[0])},
        )
    return states


def _meta_key(value: str | None) -> str | None:
    return None if value is None else _strip_nonempty(value)


class ShopifyConfig(_Model):
    """How Shopify webhooks become shop events (``POST /webhooks/shopify``)."""

    # The order topic(s) that record a purchase; "orders/create" counts an order when it is
    # placed, once its payment is paid, partially paid or authorised.
    purchase_topics: Annotated[
        tuple[ShopifyPurchaseTopic, ...], BeforeValidator(_unique_nonempty)
    ] = ("orders/paid",)
    # The line item field read as an item's category.
    category: Literal["product_type", "vendor"] = "vendor"
    # Marketing consent states (email_marketing_consent / sms_marketing_consent) that count.
    consent_states: Annotated[
        tuple[ShopifyConsentState, ...],
        BeforeValidator(_unique_nonempty),
        AfterValidator(_counts_as_consent),
    ] = ("subscribed",)


class WooCommerceConfig(_Model):
    """How WooCommerce order webhooks become shop events (``POST /webhooks/woocommerce``)."""

    # Order statuses that record the purchase ("completed" also records the fulfilment).
    purchase_statuses: Annotated[
        tuple[WooCommerceStatus, ...], BeforeValidator(_unique_nonempty)
    ] = ("processing", "completed")
    # WooCommerce keeps no marketing consent of its own: the order meta_data key a checkout
    # consent field writes, per channel ("yes", "1", "true" or "on" is a grant).
    email_consent_meta_key: Annotated[str | None, AfterValidator(_meta_key)] = None
    sms_consent_meta_key: Annotated[str | None, AfterValidator(_meta_key)] = None


# --------------------------------------------------------------------------------------------
# The whole file
# --------------------------------------------------------------------------------------------


class OperatorConfig(_Model):
    """The validated operator config. ``OperatorConfig()`` is the built-in defaults."""

    survey: SurveyConfig = SurveyConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    contact: ContactConfig = ContactConfig()
    rate_limits: RateLimits = RateLimits()
    shopify: ShopifyConfig = ShopifyConfig()
    woocommerce: WooCommerceConfig = WooCommerceConfig()

    _version: str = PrivateAttr(default="")

    def model_post_init(self, context: Any, /) -> None:
        self._version = self._compute_version()

    def _compute_version(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    def canonical_json(self) -> str:
        """The meaning of this config as one JSON text (sorted keys, canonical spellings)."""
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        )

    @property
    def version(self) -> str:
        """12 hex digits of sha256 over :meth:`canonical_json`."""
        return self._version

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied._version = copied._compute_version()
        return copied

    def summary(self) -> str:
        """A few lines an operator can read at a glance."""
        s, sc, c = self.survey, self.schedule, self.contact
        quiet = (
            f"{_format_clock(sc.quiet_hours.start)}-{_format_clock(sc.quiet_hours.end)}"
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
        ]
        return "\n".join(lines)


@lru_cache(maxsize=1)
def default_config() -> OperatorConfig:
    """The built-in defaults (CONTRACT §2 values, no rules, no arms)."""
    return OperatorConfig()


# --------------------------------------------------------------------------------------------
# Loading and errors
# --------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A config file that cannot be used; ``problems`` holds one ``key.path: reason`` each."""

    def __init__(self, path: Path | None, problems: Iterable[str]) -> None:
        self.path = path
        self.problems: tuple[str, ...] = tuple(problems)
        where = f"config {path}" if path is not None else "config"
        super().__init__(f"{where} is invalid:\n" + "\n".join(f"  {p}" for p in self.problems))


def _format_loc(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _join_paths(base: str, relative: str) -> str:
    if not relative:
        return base
    if not base:
        return relative
    return f"{base}{relative}" if relative.startswith("[") else f"{base}.{relative}"


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class whose key sits at ``loc`` (for listing the allowed keys)."""
    annotation: Any = OperatorConfig
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(part, int):
            args = [a for a in get_args(annotation) if a is not Ellipsis]
            if not args:
                return None
            annotation = args[0]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return None
            annotation = field.annotation
        else:
            return None
    annotation = _unwrap(annotation)
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is not None and type(None) in get_args(annotation):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            return annotation


def _format_errors(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        path = _format_loc(loc)
        kind = error["type"]
        ctx = error.get("ctx") or {}
        if kind == "cross_field" and "problems" in ctx:
            for relative, reason in ctx["problems"]:
                problems.append(f"{_join_paths(path, relative) or '(top)'}: {reason}")
            continue
        if kind == "extra_forbidden":
            model = _model_at(loc[:-1])
            allowed = f" (expected one of: {', '.join(model.model_fields)})" if model else ""
            message = f"unknown key{allowed}"
        elif kind == "missing":
            message = "required"
        else:
            message = str(error["msg"])
            for prefix in ("Value error, ", "Assertion failed, "):
                message = message.removeprefix(prefix)
        problems.append(f"{path or '(top)'}: {message}")
    return problems


_TOML_POSITION = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")


def _parse(raw: bytes, path: Path | None) -> OperatorConfig:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"file: not UTF-8 text (byte {exc.start})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POSITION.match(str(exc))
        if match is not None:
            problem = f"line {match['line']}, column {match['col']}: TOML syntax: {match['msg']}"
        else:
            problem = f"file: TOML syntax: {exc}"
        raise ConfigError(path, [problem]) from None
    try:
        return OperatorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, _format_errors(exc)) from None


def config_path_from_env(environ: Mapping[str, str] | None = None) -> Path:
    """``$NPS_CONFIG``, else ``./nps-dispatch.toml``."""
    env = os.environ if environ is None else environ
    return Path(env.get("NPS_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: Path | None) -> OperatorConfig:
    """Read and validate ``path``. ``None`` or an absent file: the built-in defaults.

    (``None`` does not consult ``NPS_CONFIG``; use ``load_config(config_path_from_env())``.)
    Raises :class:`ConfigError` listing every problem.
    """
    if path is None:
        return default_config()
    raw = _read(path)
    if raw is None:
        log.info("no config file at %s: using the built-in defaults", path)
        return default_config()
    return _parse(raw, path)


def _read(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(path, ["file: is a directory"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"file: cannot read ({exc.strerror or exc})"]) from None


def check_config_file(path: Path) -> tuple[bool, str]:
    """For ``nps-dispatch config check [FILE]``: ``(ok, message to print)``."""
    try:
        raw = _read(path)
        if raw is None:
            return (
                False,
                f"no config file at {path}\n"
                f"(a process would run on the built-in defaults, version "
                f"{default_config().version})",
            )
        config = _parse(raw, path)
    except ConfigError as exc:
        return False, str(exc)
    return True, f"config {path} is valid (version {config.version})\n{config.summary()}"


# --------------------------------------------------------------------------------------------
# The holder of a running process
# --------------------------------------------------------------------------------------------

ChangeCallback = Callable[[OperatorConfig, OperatorConfig], None]
_MISSING = "missing"


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a :meth:`ConfigHolder.reload` did.

    ``ok``: the file on disk is usable (or unchanged and was usable). ``changed``: the active
    config's version changed. ``problems``: why the file was refused (the old config stays).
    """

    ok: bool
    changed: bool
    version: str
    previous_version: str
    message: str
    problems: tuple[str, ...] = ()


class ConfigHolder:
    """The current good config of a long-running process; thread-safe.

    The file is re-read on :meth:`reload` (and on SIGHUP, and every ``interval_seconds`` once
    :meth:`start_watching` runs); a change of content is parsed, and a good file replaces the
    config, while a bad one is logged with its key paths and the last good config stays.
    A file that disappears after it was loaded also keeps the last good config (a restart goes
    to the built-in defaults); a file that appears where there was none is loaded.

    The constructor loads the file once and raises :class:`ConfigError` if it is bad: a process
    does not start on a config it cannot read.
    """

    def __init__(
        self, path: Path | None = None, *, on_change: Iterable[ChangeCallback] = ()
    ) -> None:
        self.path = path if path is not None else config_path_from_env()
        self._lock = threading.Lock()
        self._listeners: list[ChangeCallback] = list(on_change)
        self._stop_event = threading.Event()
        self._watcher: threading.Thread | None = None
        self._previous_sighup: Any = None
        self._sighup_installed = False
        raw = _read(self.path)
        if raw is None:
            self._config = default_config()
            self._seen = _MISSING
            self._loaded_from_file = False
            log.info(
                "no config file at %s: built-in defaults (%s)", self.path, self._config.version
            )
        else:
            self._config = _parse(raw, self.path)
            self._seen = hashlib.sha256(raw).hexdigest()
            self._loaded_from_file = True
            log.info("config %s loaded (version %s)", self.path, self._config.version)
        self._last_problems: tuple[str, ...] = ()

    def current(self) -> OperatorConfig:
        return self._config

    def add_listener(self, callback: ChangeCallback) -> None:
        """``callback(old, new)`` after each successful change of version."""
        with self._lock:
            self._listeners.append(callback)

    def reload(self, *, force: bool = False) -> ReloadResult:
        """Re-read the file; parse it when its content changed (or ``force``)."""
        with self._lock:
            old = self._config
            result = self._reload_locked(old, force)
            listeners = list(self._listeners) if result.changed else []
            new = self._config
        for callback in listeners:
            try:
                callback(old, new)
            except Exception:
                log.exception("config change listener %r failed", callback)
        return result

    def _reload_locked(self, old: OperatorConfig, force: bool) -> ReloadResult:
        def refused(problems: tuple[str, ...], fresh: bool) -> ReloadResult:
            if fresh:
                self._last_problems = problems
                log.error(
                    "config %s refused; keeping version %s:\n%s",
                    self.path,
                    old.version,
                    "\n".join(f"  {p}" for p in problems),
                )
            return ReloadResult(
                ok=False,
                changed=False,
                version=old.version,
                previous_version=old.version,
                message=f"config {self.path} refused; keeping version {old.version}",
                problems=problems,
            )

        def unchanged(message: str) -> ReloadResult:
            return ReloadResult(True, False, old.version, old.version, message)

        try:
            raw = _read(self.path)
        except ConfigError as exc:
            return refused(exc.problems, fresh=True)
        seen = _MISSING if raw is None else hashlib.sha256(raw).hexdigest()
        fresh = force or seen != self._seen
        if not fresh:
            if self._last_problems:
                return refused(self._last_problems, fresh=False)
            return unchanged("config file unchanged")
        self._seen = seen
        if raw is None:
            if not self._loaded_from_file:
                self._last_problems = ()
                return unchanged("no config file: built-in defaults")
            return refused(("file: missing (restart to use the built-in defaults)",), fresh=True)
        try:
            new = _parse(raw, self.path)
        except ConfigError as exc:
            return refused(exc.problems, fresh=True)
        self._last_problems = ()
        self._loaded_from_file = True
        if new.version == old.version:
            return unchanged(f"config file re-read; same meaning (version {old.version})")
        self._config = new
        log.info("config %s reloaded: version %s -> %s", self.path, old.version, new.version)
        return ReloadResult(
            ok=True,
            changed=True,
            version=new.version,
            previous_version=old.version,
            message=f"config reloaded: version {old.version} -> {new.version}",
        )

    # -- SIGHUP ----------------------------------------------------------------------------------
    def install_sighup_handler(self) -> bool:
        """Reload on SIGHUP. Main thread only; returns False where that is not possible."""
        sighup = getattr(signal, "SIGHUP", None)
        if sighup is None:
            log.debug("no SIGHUP on this platform: reload by polling only")
            return False
        if threading.current_thread() is not threading.main_thread():
            log.warning("SIGHUP handler not installed: not on the main thread")
            return False
        self._previous_sighup = signal.signal(sighup, self._on_sighup)
        self._sighup_installed = True
        return True

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler runs in the main thread between bytecodes, possibly inside reload()
        # holding the lock: hand the work to a thread instead of reloading here.
        threading.Thread(target=self._reload_from_signal, name="config-sighup", daemon=True).start()

    def _reload_from_signal(self) -> None:
        try:
            result = self.reload(force=True)
            log.info("SIGHUP: %s", result.message)
        except Exception:
            log.exception("config reload on SIGHUP failed")

    # -- polling ---------------------------------------------------------------------------------
    def start_watching(self, interval_seconds: float = 30.0) -> None:
        """Poll the file every ``interval_seconds`` in a daemon thread (idempotent)."""
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._stop_event.clear()

        def watch() -> None:
            while not self._stop_event.wait(interval_seconds):
                try:
                    self.reload()
                except Exception:
                    log.exception("config watcher: reload failed")

        self._watcher = threading.Thread(target=watch, name="config-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop the watcher and give SIGHUP back to its previous handler."""
        self._stop_event.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=5)
        if self._sighup_installed and threading.current_thread() is threading.main_thread():
            previous = self._previous_sighup
            signal.signal(signal.SIGHUP, previous if previous is not None else signal.SIG_DFL)
            self._sighup_installed = False
