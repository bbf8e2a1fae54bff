"""The parts the shop's events are made of: field types (ids, texts, plausible times), the
customer, consent evidence, money and order lines, and :func:`rule`, how our own rules report a
broken one under a stable code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "CENT",
    "EARLIEST",
    "MAX_AHEAD",
    "ConsentIn",
    "CountryCode",
    "CustomerIn",
    "CustomerRef",
    "EventId",
    "EventTime",
    "Id",
    "ItemIn",
    "Model",
    "MoneyIn",
    "ShortText",
    "rule",
]

Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
EventId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=120)]
CountryCode = Annotated[
    str, StringConstraints(strip_whitespace=True, to_upper=True, pattern=r"^[A-Za-z]{2}$")
]

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
# Shop clocks drift and time zones get mixed up; a day of slack covers both, a year 9999 does not.
MAX_AHEAD = timedelta(days=1)
CENT = Decimal("0.01")


def rule(code: str, reason: str) -> PydanticCustomError:
    """A broken rule of ours, under a stable code (the reason travels in the context, so that a
    brace in it is never read as a placeholder)."""
    return PydanticCustomError(code, "{reason}", {"reason": reason})


def _plausible_time(value: datetime, info: ValidationInfo) -> datetime:
    now = (info.context or {}).get("now")
    if not isinstance(now, datetime):
        # Not a ValueError on purpose: a missing clock is a bug of the caller, not of the event.
        raise TypeError("validate shop events with parse_event(raw, now=...)")
    if value < EARLIEST:
        raise rule("time_out_of_range", "must not be before 2000-01-01T00:00:00Z")
    if value > now + MAX_AHEAD:
        received = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
        raise rule(
            "time_out_of_range",
            f"must not be more than 1 day after the time of ingest ({received})",
        )
    # One instant, one spelling: "+01:00" and "Z" forms of a time compare and fingerprint equal.
    return value.astimezone(UTC)


EventTime = Annotated[AwareDatetime, AfterValidator(_plausible_time)]


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)


class CustomerIn(Model):
    id: Id
    email: Annotated[str, StringConstraints(max_length=320)] | None = None
    phone: Annotated[str, StringConstraints(max_length=40)] | None = None
    first_name: ShortText | None = None
    locale: Annotated[str, StringConstraints(max_length=35)] | None = None
    timezone: Annotated[str, StringConstraints(max_length=64)] | None = None
    country: CountryCode | None = None
    previous_orders: Annotated[int, Field(ge=0, le=1_000_000)] | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise rule("unknown_time_zone", f"unknown IANA time zone {value!r}") from None
        return value


class ConsentIn(Model):
    """Consent evidence. ``email`` and ``sms`` are each channel's state after the event (omitted or
    ``null``: that channel is not concerned)."""

    email: bool | None = None
    sms: bool | None = None
    source: ShortText | None = None
    text_version: Annotated[str, StringConstraints(max_length=64)] | None = None
    captured_at: EventTime | None = None

    def channels(self) -> dict[str, bool]:
        return {ch: v for ch, v in (("email", self.email), ("sms", self.sms)) if v is not None}


class MoneyIn(Model):
    amount: Annotated[
        Decimal,
        Field(ge=0, le=Decimal("1e11"), max_digits=14, decimal_places=2),
        WithJsonSchema(
            {
                "type": "string",
                "pattern": r"^[0-9]{1,12}(\.[0-9]{1,2})?$",
                "description": 'a decimal amount as a string, e.g. "129.90" (a JSON number '
                "would already have lost its cents' exactness)",
            }
        ),
    ]
    currency: Annotated[str, StringConstraints(to_upper=True, pattern=r"^[A-Za-z]{3}$")]

    @field_validator("amount", mode="before")
    @classmethod
    def _no_float(cls, value: Any) -> Any:
        # Money arrives as a string ("129.90"); a float has already lost its cents' exactness.
        if isinstance(value, float):
            raise rule("amount_not_string", 'give the amount as a string, e.g. "129.90"')
        return value

    @field_validator("amount")
    @classmethod
    def _in_cents(cls, value: Decimal) -> Decimal:
        # "129.9", "129.90" and "1.299E+2" are one amount; keep one form of it (adding 0 also
        # turns a "-0" into "0").
        return (value + 0).quantize(CENT)


class ItemIn(Model):
    sku: Annotated[str, StringConstraints(max_length=64)] | None = None
    category: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    quantity: Annotated[int, Field(ge=0, le=1_000_000)] = 1


class CustomerRef(Model):
    id: Id
