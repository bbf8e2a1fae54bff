"""Outbound rate limits per channel (config `[rate_limits]`, messages per second).

A burst of due surveys must not meet the providers' 429s. With Redis (production) every worker
process shares one counter per channel and second; without it (demo, tests) a token bucket in
the process does the same for that process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class RateLimiter(Protocol):
    def acquire(self, channel: str, per_second: float) -> object:
        """Block until one more message on ``channel`` fits within ``per_second``."""


class InProcessRateLimiter:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_free: dict[str, float] = {}

    def acquire(self, channel: str, per_second: float) -> None:
        interval = 1.0 / per_second
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_free.get(channel, now))
            self._next_free[channel] = slot + interval
        wait = slot - now
        if wait > 0:
            self._sleep(wait)


class RedisRateLimiter:
    """A fixed one-second window per channel, shared by every process through Redis."""

    def __init__(self, client: object, prefix: str = "nps:rate") -> None:
        self._client = client
        self._prefix = prefix

    def acquire(self, channel: str, per_second: float) -> int:
        """Returns the second (epoch) whose budget the message was counted in."""
        limit = max(int(per_second), 1)
        while True:
            now = time.time()
            second = int(now)
            key = f"{self._prefix}:{channel}:{second}"
            pipe = self._client.pipeline()  # type: ignore[attr-defined]
            pipe.incr(key)
            pipe.expire(key, 2)
            count = int(pipe.execute()[0])
            if count <= limit:
                return second
            time.sleep(max(second + 1 - now, 0.001))
