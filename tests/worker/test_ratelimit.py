"""Outbound rate limits: in-process token spacing and the shared Redis window."""

from __future__ import annotations

import threading

from worker.ratelimit import InProcessRateLimiter, RedisRateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_in_process_limiter_spaces_messages_per_channel():
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock=clock, sleep=clock.sleep)
    for _ in range(5):
        limiter.acquire("sms", 10.0)
    assert clock.slept == [0.1, 0.1, 0.1, 0.1]  # the first goes at once, then one per 100 ms
    limiter.acquire("email", 50.0)  # another channel has its own budget
    assert len(clock.slept) == 4


def test_in_process_limiter_allows_after_idle_time():
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock=clock, sleep=clock.sleep)
    limiter.acquire("sms", 1.0)
    clock.now += 5
    limiter.acquire("sms", 1.0)
    assert clock.slept == []


def test_redis_limiter_shares_one_budget_between_processes(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    limiters = [RedisRateLimiter(client, prefix="test:rate") for _ in range(3)]
    granted: list[int] = []
    lock = threading.Lock()

    def burst(limiter: RedisRateLimiter) -> None:
        for _ in range(4):
            window = limiter.acquire("sms", 5.0)
            with lock:
                granted.append(window)

    threads = [threading.Thread(target=burst, args=(lim,)) for lim in limiters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_second: dict[int, int] = {}
    for second in granted:
        per_second[second] = per_second.get(second, 0) + 1
    assert len(granted) == 12
    assert max(per_second.values()) <= 5  # never more than the limit in any second
    assert len(per_second) >= 3  # 12 messages at 5 a second need three windows
