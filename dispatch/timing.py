"""When to ask: pure timing functions (no database, no clock; the caller passes ``now``).

Every datetime in and out is timezone-aware; results are in UTC. Naive datetimes are refused.

- :func:`resolve_timezone`: the recipient's zone (explicit > phone number > country > default),
  from :mod:`dispatch.zones`.
- :func:`select_delay`, :func:`choose_arm`, :func:`jitter_offset`: the delay of one survey.
- :func:`effective_anchor`: the moment the delay counts from.
- :func:`next_allowed_moment`, :func:`plan_due_time`: quiet hours and send days, in local time.

Durations are absolute elapsed time: ``"3d"`` is 72 hours, so across a DST change the local hour
of the due time shifts by the DST difference before quiet hours are applied.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from config import WEEKDAYS, AnchorKind, Arm, OperatorConfig, QuietHours
from dispatch.zones import country_zones, resolve_timezone

__all__ = [
    "AnchorResolution",
    "DelayChoice",
    "anchor_after_timeout",
    "choose_arm",
    "country_zones",
    "effective_anchor",
    "is_allowed_moment",
    "jitter_offset",
    "next_allowed_moment",
    "plan_due_time",
    "resolve_timezone",
    "select_delay",
    "unit_interval",
]

log = logging.getLogger(__name__)


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


# --------------------------------------------------------------------------------------------
# Reproducible randomness
# --------------------------------------------------------------------------------------------


def _hash64(purpose: str, key: str) -> int:
    digest = hashlib.sha256(f"{purpose}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def unit_interval(purpose: str, key: str) -> float:
    """A uniform number in [0, 1) from ``key``; ``purpose`` keeps independent uses independent
    (the arm of a survey tells nothing about its jitter)."""
    return _hash64(purpose, key) / 2**64


# --------------------------------------------------------------------------------------------
# The delay
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DelayChoice:
    delay: timedelta
    rule_index: int | None  # index into schedule.rules; None = schedule.delay


def select_delay(
    config: OperatorConfig,
    *,
    category: str | None,
    channel: str | None,
    country: str | None,
    sales_channel: str | None,
) -> DelayChoice:
    """The delay of the first rule that matches (rules in file order), else ``schedule.delay``."""
    for index, rule in enumerate(config.schedule.rules):
        if rule.match.matches(
            category=category, channel=channel, country=country, sales_channel=sales_channel
        ):
            return DelayChoice(rule.delay, index)
    return DelayChoice(config.schedule.delay, None)


def choose_arm(arms: Sequence[Arm], survey_key: str) -> Arm | None:
    """The arm of a survey, drawn with probability ``weight / sum(weights)`` from a hash of
    ``survey_key``: the same key always gets the same arm (for an unchanged list of arms)."""
    if not arms:
        return None
    total = sum(arm.weight for arm in arms)
    point = unit_interval("arm", survey_key) * total
    cumulative = 0.0
    for arm in arms:
        cumulative += arm.weight
        if point < cumulative:
            return arm
    return arms[-1]  # float rounding at the very top


def jitter_offset(jitter: timedelta, key: str) -> timedelta:
    """A whole-second offset in ``[0, jitter)``, the same for the same key (none if jitter < 1s)."""
    seconds = int(jitter.total_seconds())
    if seconds <= 0:
        return timedelta(0)
    return timedelta(seconds=_hash64("jitter", key) * seconds // 2**64)


# --------------------------------------------------------------------------------------------
# The anchor
# --------------------------------------------------------------------------------------------

AnchorUsed = Literal["purchase", "fulfilled", "delivered", "timeout"]


@dataclass(frozen=True, slots=True)
class AnchorResolution:
    """``anchor_at`` set: the delay counts from it (``kind_used`` says which event).
    ``anchor_at`` None: wait for the anchor event until ``waiting_until`` (``kind_used`` is the
    configured kind); then :func:`anchor_after_timeout` gives the anchor."""

    anchor_at: datetime | None
    kind_used: AnchorUsed
    waiting_until: datetime | None


def anchor_after_timeout(purchased_at: datetime, anchor_timeout: timedelta) -> AnchorResolution:
    """No anchor event in time: anchor on ``purchased_at + anchor_timeout`` (operator config)."""
    _require_aware("purchased_at", purchased_at)
    at = purchased_at.astimezone(UTC) + anchor_timeout
    return AnchorResolution(anchor_at=at, kind_used="timeout", waiting_until=None)


def effective_anchor(
    anchor_kind: AnchorKind,
    purchased_at: datetime,
    fulfilled_at: datetime | None,
    delivered_at: datetime | None,
    anchor_timeout: timedelta,
    now: datetime | None = None,
) -> AnchorResolution:
    """The moment the delay counts from.

    - ``purchase``: the purchase.
    - ``fulfilled``: the fulfilment; when only the delivery is known, the delivery (it proves the
      order shipped; ``kind_used = "delivered"``).
    - ``delivered``: the delivery.
    - The event not known: wait until ``purchased_at + anchor_timeout``
      (``anchor_at=None, waiting_until=...``); when ``now`` is given and that moment has come,
      anchor on it instead (``kind_used = "timeout"``, as :func:`anchor_after_timeout`).
    """
    _require_aware("purchased_at", purchased_at)
    if anchor_kind == "purchase":
        return AnchorResolution(purchased_at.astimezone(UTC), "purchase", None)
    known: list[tuple[AnchorUsed, datetime | None]] = (
        [("fulfilled", fulfilled_at), ("delivered", delivered_at)]
        if anchor_kind == "fulfilled"
        else [("delivered", delivered_at)]
    )
    for kind, at in known:
        if at is not None:
            _require_aware(f"{kind}_at", at)
            return AnchorResolution(at.astimezone(UTC), kind, None)
    deadline = purchased_at.astimezone(UTC) + anchor_timeout
    if now is not None:
        _require_aware("now", now)
        if now >= deadline:
            return anchor_after_timeout(purchased_at, anchor_timeout)
    return AnchorResolution(anchor_at=None, kind_used=anchor_kind, waiting_until=deadline)


# --------------------------------------------------------------------------------------------
# Quiet hours and send days
# --------------------------------------------------------------------------------------------


def _weekday_numbers(send_days: Collection[str]) -> frozenset[int]:
    days = frozenset(WEEKDAYS.index(d) for d in send_days)
    if not days:
        raise ValueError("send_days must name at least one day")
    return days


def is_allowed_moment(
    moment: datetime, tz: ZoneInfo, quiet_hours: QuietHours, send_days: Collection[str]
) -> bool:
    """Whether ``moment`` falls on a send day and outside quiet hours, in ``tz`` local time."""
    _require_aware("moment", moment)
    return _allowed(moment, tz, quiet_hours, _weekday_numbers(send_days))


def _allowed(moment: datetime, tz: ZoneInfo, quiet: QuietHours, days: frozenset[int]) -> bool:
    local = moment.astimezone(tz)
    return local.weekday() in days and not quiet.contains(local.time())


def _transitions(tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """UTC offset changes of ``tz`` in ``(start, end]``, to the second (6-hour scan + bisection)."""

    def offset(moment: datetime) -> timedelta | None:
        return moment.astimezone(tz).utcoffset()

    found: list[datetime] = []
    step = timedelta(hours=6)
    low = start
    while low < end:
        high = min(low + step, end)
        if offset(low) != offset(high):
            before = offset(low)
            a, b = low, high  # offset(a) == before != offset(b)
            while b - a > timedelta(seconds=1):
                mid = a + (b - a) / 2
                mid = mid.replace(microsecond=0)
                if mid <= a:
                    mid = a + timedelta(seconds=1)
                if offset(mid) == before:
                    a = mid
                else:
                    b = mid
            found.append(b)
        low = high
    return found


def next_allowed_moment(
    candidate_utc: datetime,
    tz: ZoneInfo,
    quiet_hours: QuietHours,
    send_days: Collection[str],
) -> datetime:
    """``candidate_utc`` when it is allowed, else the first allowed moment after it (UTC).

    Allowed = a send day, outside quiet hours, both judged on the recipient's local wall clock.
    So a moment in quiet hours moves to the end of the quiet hours (the next day's end when they
    wrap midnight), skipping days that are not send days; with no quiet hours a non-send day moves
    to the next send day's 00:00. Local times that do not exist (spring forward) are never
    produced: the moment becomes the transition itself; a repeated local hour (fall back) counts
    from its first occurrence, and a clock set back into allowed hours is allowed from the
    transition.

    How: the answer is an instant where "allowed" turns true, i.e. a local day's allowed interval
    starts (00:00 or the end of quiet hours, each fold) or the UTC offset changes. Gather those
    instants after the candidate, in order, and return the first that is allowed.
    """
    _require_aware("candidate_utc", candidate_utc)
    days = _weekday_numbers(send_days)
    candidate = candidate_utc.astimezone(UTC)
    if _allowed(candidate, tz, quiet_hours, days):
        return candidate
    if not quiet_hours.enabled:
        starts = [time(0, 0)]
    elif quiet_hours.wraps_midnight:
        starts = [quiet_hours.end]
    else:
        starts = [time(0, 0), quiet_hours.end]
    first_day = candidate.astimezone(tz).date()
    for horizon_days in (2, 9, 16):  # a week and a day always suffice but for odd DST rules
        found = _first_allowed(candidate, tz, quiet_hours, days, starts, first_day, horizon_days)
        if found is not None:
            return found
    raise ValueError(  # only reachable with a pathological zone and quiet-hours combination
        f"no allowed moment within 16 days after {candidate.isoformat()} in {tz.key}"
    )


def _first_allowed(
    candidate: datetime,
    tz: ZoneInfo,
    quiet: QuietHours,
    days: frozenset[int],
    starts: list[time],
    first_day: date,
    horizon_days: int,
) -> datetime | None:
    """The first allowed moment after ``candidate`` and before the local midnight that ends the
    ``horizon_days`` local days from ``first_day``; None if there is none in that span."""
    end_day = first_day + timedelta(days=horizon_days)
    boundary = min(
        datetime.combine(end_day, time(0), tzinfo=tz).replace(fold=fold).astimezone(UTC)
        for fold in (0, 1)
    )
    points: set[datetime] = set()
    for offset in range(horizon_days):
        day = first_day + timedelta(days=offset)
        if day.weekday() not in days:
            continue
        for start in starts:
            for fold in (0, 1):
                local = datetime.combine(day, start, tzinfo=tz).replace(fold=fold)
                instant = local.astimezone(UTC)
                if candidate < instant < boundary:
                    points.add(instant)
    points.update(t for t in _transitions(tz, candidate, boundary) if t < boundary)
    for point in sorted(points):
        if _allowed(point, tz, quiet, days):
            return point
    return None


def plan_due_time(
    anchor_at: datetime,
    delay: timedelta,
    jitter: timedelta,
    key: str,
    tz: ZoneInfo,
    quiet_hours: QuietHours,
    send_days: Collection[str],
) -> datetime:
    """``anchor_at + delay + jitter_offset(jitter, key)``, then :func:`next_allowed_moment`.

    When that moves the time (to the end of quiet hours or to the next send day), the same jitter
    offset is added again from the new moment if that is still allowed, so surveys deferred
    overnight spread over the morning instead of all landing on, say, 09:00:00 local.
    """
    _require_aware("anchor_at", anchor_at)
    offset = jitter_offset(jitter, key)
    raw = anchor_at.astimezone(UTC) + delay + offset  # UTC first: elapsed, not wall, time
    due = next_allowed_moment(raw, tz, quiet_hours, send_days)
    if due != raw and offset:
        spread = due + offset
        if _allowed(spread, tz, quiet_hours, _weekday_numbers(send_days)):
            return spread
    return due
