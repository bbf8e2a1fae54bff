"""``[contact]`` and ``[rate_limits]``: which channels to try and in what order, who is left
out, how often one customer may be asked, and how fast each channel may send."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Annotated

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from config.values import Amount, ChannelName, ConfigModel, Duration

__all__ = ["ContactConfig", "Exclude", "RateLimits"]


class Exclude(ConfigModel):
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


class ContactConfig(ConfigModel):
    channels: Annotated[tuple[ChannelName, ...], BeforeValidator(_channels)] = (
        ChannelName.email,
        ChannelName.sms,
    )
    fallback: bool = True
    frequency_cap: Duration = timedelta(days=90)
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    exclude: Exclude = Exclude()


class RateLimits(ConfigModel):
    """Messages per second each channel may send (enforced by the channels)."""

    email: float = Field(default=50.0, gt=0, allow_inf_nan=False)
    sms: float = Field(default=10.0, gt=0, allow_inf_nan=False)

    def for_channel(self, channel: str) -> float | None:
        value = getattr(self, channel, None)
        return float(value) if isinstance(value, float | int) else None
