"""Rate limits: outbound messages per channel (config ``[rate_limits]``, messages per second),
and the algorithm the public web routes use too.

Both use GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp per key):
``interval = 1 / rate`` seconds between grants, after an initial burst of ``burst`` grants. Unlike
a counter per fixed window, it never lets twice the rate through around a window edge, and any
rate works, 0.2 a second (one message every 5 s) as well as 500.

- :class:`InProcessRateLimiter`: one process (demo, tests, a worker without Redis).
- :class:`RedisRateLimiter`: every worker process shares one schedule per channel through Redis.
  The state lives in one key per channel, updated by a Lua script (atomic), timed by the Redis
  server's clock so that hosts with drifting clocks still agree. When Redis fails, each process
  falls back to its own spacing (and says so in the log) rather than failing a send it has
  already claimed.

Outbound sends *reserve* the next free slot and sleep until it (first come, first served, no
polling); web requests are *checked* and refused with the wait when over the limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

__all__ = [
    "GCRA_SCRIPT",
    "InProcessRateLimiter",
    "RateLimiter",
    "RedisBreaker",
    "RedisGcra",
    "RedisRateLimiter",
    "gcra",
]

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    def acquire(self, channel: str, per_second: float) -> object:
        """Block until one more message on ``channel`` fits within ``per_second``."""


@dataclass(frozen=True, slots=True)
class Decision:
    """``allowed``: granted (always, when reserving); ``wait``: seconds from ``now`` until the
    grant's slot (reserving) or until a grant would be possible (refused); ``now``: the clock
    the decision was taken at."""

    allowed: bool
    wait: float
    now: float


def gcra(
    tat: float | None, now: float, interval: float, tolerance: float, *, reserve: bool
) -> tuple[float | None, Decision]:
    """One GCRA step: the key's new theoretical arrival time (``None``: unchanged) and the
    decision. ``tolerance = interval * (burst - 1)``. :data:`GCRA_SCRIPT` is the same in Lua."""
    arrival = now if tat is None or tat < now else tat
    wait = arrival - tolerance - now
    if wait > 0 and not reserve:
        return None, Decision(False, wait, now)
    return arrival + interval, Decision(True, max(wait, 0.0), now)


def _interval(per_second: float) -> float:
    if not per_second > 0:
        raise ValueError(f"a rate limit needs a rate above 0 per second, got {per_second!r}")
    return 1.0 / per_second


class InProcessRateLimiter:
    """Spaces messages ``1 / per_second`` apart per channel within this process."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}

    def acquire(self, channel: str, per_second: float) -> float:
        """Returns the slot (on this limiter's clock) the message was granted."""
        interval = _interval(per_second)
        with self._lock:
            tat, decision = gcra(self._tat.get(channel), self._clock(), interval, 0.0, reserve=True)
            if tat is None:  # reserving always grants: a broken gcra()
                raise RuntimeError("a reserving GCRA step granted no slot")
            self._tat[channel] = tat
        if decision.wait > 0:
            self._sleep(decision.wait)
        return decision.now + decision.wait


GCRA_SCRIPT = """
-- KEYS[1]: the key; ARGV: interval, tolerance, reserve ('1' or '0'), now ('' = server clock)
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 and ARGV[3] ~= '1' then
  return {0, string.format('%.6f', wait), string.format('%.6f', now)}
end
if wait < 0 then wait = 0 end
local new_tat = tat + interval
local ttl = math.ceil((new_tat - now) * 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', ttl)
return {1, string.format('%.6f', wait), string.format('%.6f', now)}
"""


class RedisGcra:
    """:func:`gcra` on keys in Redis, atomically (one script call per decision).

    ``clock``: seconds to decide at, the same for every process sharing the keys; ``None``
    (production) uses the Redis server's clock. Raises :class:`redis.RedisError` when Redis
    does; the callers decide what a failure means."""

    def __init__(self, client: redis.Redis, clock: Callable[[], float] | None = None) -> None:
        self._script = client.register_script(GCRA_SCRIPT)
        self._clock = clock

    def take(self, key: str, interval: float, tolerance: float, *, reserve: bool) -> Decision:
        now = "" if self._clock is None else repr(self._clock())
        allowed, wait, at = self._script(
            keys=[key], args=[repr(interval), repr(tolerance), "1" if reserve else "0", now]
        )
        return Decision(bool(int(allowed)), float(wait), float(at))


class RedisBreaker:
    """After a Redis failure, answers "unavailable" for ``pause`` seconds, so that callers use
    their local fallback at once instead of waiting for Redis's timeouts on every call. Logs a
    warning once per outage and a note when Redis answers again."""

    def __init__(
        self, what: str, pause: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._what = what
        self._pause = pause
        self._clock = clock
        self._until: float | None = None

    def available(self) -> bool:
        until = self._until
        return until is None or self._clock() >= until

    def failed(self, exc: Exception) -> None:
        if self._until is None:
            log.warning(
                "shared %s unavailable (%s): each process applies its own until Redis answers",
                self._what,
                exc.__class__.__name__,
            )
        self._until = self._clock() + self._pause

    def succeeded(self) -> None:
        if self._until is not None:
            log.info("shared %s available again", self._what)
            self._until = None


class RedisRateLimiter:
    """One schedule per channel shared by every process through Redis (see the module doc)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "nps:rate",
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        fallback: RateLimiter | None = None,
        breaker: RedisBreaker | None = None,
    ) -> None:
        self._gcra = RedisGcra(client, clock)
        self._prefix = prefix
        self._sleep = sleep
        self._fallback = fallback or InProcessRateLimiter(sleep=sleep)
        self._breaker = breaker or RedisBreaker("outbound rate limit")

    def acquire(self, channel: str, per_second: float) -> object:
        """Returns the slot (seconds on the shared clock) the message was granted."""
        interval = _interval(per_second)
        if not self._breaker.available():
            return self._fallback.acquire(channel, per_second)
        try:
            decision = self._gcra.take(f"{self._prefix}:{channel}", interval, 0.0, reserve=True)
        except redis.RedisError as exc:
            self._breaker.failed(exc)
            return self._fallback.acquire(channel, per_second)
        self._breaker.succeeded()
        if decision.wait > 0:
            self._sleep(decision.wait)
        return decision.now + decision.wait
