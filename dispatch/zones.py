"""The recipient's time zone: explicit zone, else the zone of their phone number, else of their
country (when the country has one UTC behaviour), else the operator's default."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Final
from zoneinfo import TZPATH, ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezone

__all__ = ["NO_PHONE_ZONE", "country_zones", "number_zone", "resolve_timezone"]

log = logging.getLogger(__name__)

_UNKNOWN_ZONE = "Etc/Unknown"

# Stored in ``customers.phone_timezone`` beside a number that gives no zone, so that the number
# is not parsed again to learn it. NULL there means "not derived" (a row stored before the
# column, or a number changed without its zone, which a trigger then empties).
NO_PHONE_ZONE: Final = ""


def _zone(name: str | None) -> ZoneInfo | None:
    if not name or not name.strip() or name == _UNKNOWN_ZONE:
        return None
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _zone_tab_text() -> str | None:
    """``zone.tab`` of the system tz database (Debian: /usr/share/zoneinfo, package tzdata),
    else of the ``tzdata`` Python package; the same search order as :mod:`zoneinfo`."""
    for directory in TZPATH:
        candidate = Path(directory) / "zone.tab"
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    try:
        return (resources.files("tzdata") / "zoneinfo" / "zone.tab").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        return None


@lru_cache(maxsize=1)
def _zones_by_country() -> dict[str, tuple[str, ...]]:
    text = _zone_tab_text()
    if text is None:
        log.warning("no zone.tab found: a country alone will not give a time zone")
        return {}
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) >= 3:
            table.setdefault(fields[0].upper(), []).append(fields[2])
    return {code: tuple(zones) for code, zones in table.items()}


def country_zones(country: str) -> tuple[str, ...]:
    """The zones ``zone.tab`` lists for an ISO 3166 code, most populous first."""
    return _zones_by_country().get(country.strip().upper(), ())


@lru_cache(maxsize=1)
def _sample_instants() -> tuple[datetime, ...]:
    """Every other day of last, this and next year: enough to tell zones' current rules apart."""
    start = datetime(datetime.now(UTC).year - 1, 1, 1, tzinfo=UTC)
    return tuple(start + timedelta(days=2 * i, hours=12) for i in range(3 * 366 // 2))


@lru_cache(maxsize=1024)
def _behaviour(zone: str) -> tuple[timedelta | None, ...]:
    tz = ZoneInfo(zone)
    return tuple(instant.astimezone(tz).utcoffset() for instant in _sample_instants())


def _one_behaviour(zones: Sequence[str]) -> ZoneInfo | None:
    """The first zone when every zone given keeps the same clock (e.g. Berlin and Busingen, or
    London and Jersey), else None: an ambiguous list gives no answer."""
    name = _one_behaviour_name(tuple(zones))
    return None if name is None else ZoneInfo(name)


@lru_cache(maxsize=4096)
def _one_behaviour_name(zones: tuple[str, ...]) -> str | None:
    usable = [z for z in zones if _zone(z) is not None]
    if not usable:
        return None
    first = _behaviour(usable[0])
    if all(_behaviour(z) == first for z in usable[1:]):
        return usable[0]
    return None


def number_zone(number: phonenumbers.PhoneNumber) -> str:
    """The zone a parsed number gives, by libphonenumber's prefix data: one zone, or several
    that keep the same clock; else :data:`NO_PHONE_ZONE`. Its result is what
    ``customers.phone_timezone`` stores, so that planning need not parse the number again."""
    zones = [z for z in phone_timezone.time_zones_for_number(number) if z != _UNKNOWN_ZONE]
    if not zones:
        return NO_PHONE_ZONE
    # Several zones that behave alike (+44: London, Guernsey, Jersey, Isle of Man): prefer the
    # principal zone of the number's own country.
    region = phonenumbers.region_code_for_number(number)
    principal = country_zones(region)[:1] if region else ()
    ordered = [z for z in principal if z in zones] + [z for z in zones if z not in principal]
    name = _one_behaviour_name(tuple(ordered))
    return NO_PHONE_ZONE if name is None else name


def _phone_zone(phone_e164: str, derived: str | None) -> ZoneInfo | None:
    if derived is None:
        try:
            derived = number_zone(phonenumbers.parse(phone_e164, None))
        except phonenumbers.NumberParseException:
            return None
    return _zone(derived)


def resolve_timezone(
    explicit: str | None,
    phone_e164: str | None,
    country: str | None,
    default: str,
    *,
    phone_zone: str | None = None,
) -> ZoneInfo:
    """The recipient's time zone.

    1. ``explicit`` when it names a known IANA zone;
    2. else the zone of the phone number (libphonenumber's prefix data), when it gives one zone
       (or several that keep the same clock) — a +1 212 number is New York whatever the country.
       ``phone_zone`` is that zone as derived when the number was stored (:func:`number_zone`);
       when it is None the number is parsed here;
    3. else the zone of ``country`` from the tz database's ``zone.tab`` (system tzdata on
       Debian, else the ``tzdata`` package), when the country has one zone or all its zones keep
       the same clock now (DE: Berlin and Busingen); US, RU, AU, ... give no answer here;
    4. else ``default``.
    """
    zone = _zone(explicit)
    if zone is not None:
        return zone
    if phone_e164:
        zone = _phone_zone(phone_e164, phone_zone)
        if zone is not None:
            return zone
    if country:
        zone = _one_behaviour(country_zones(country))
        if zone is not None:
            return zone
    return ZoneInfo(default)
