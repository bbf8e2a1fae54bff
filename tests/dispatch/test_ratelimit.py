"""Outbound rate limits: GCRA spacing in process and shared through a real Redis.

A fixed one-second counter lets twice the rate through around a second's edge and cannot express
rates below one a second; these tests measure the grants against the exact spacing instead.
"""

from __future__ import annotations

import itertools
import threading

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dispatch.ratelimit import InProcessRateLimiter, RedisBreaker, RedisRateLimiter, gcra


class FakeClock:
    """A clock shared by every limiter of a test; ``sleep`` moves it forward."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def max_in_any_window(times: list[float], window: float) -> int:
    """The most grants inside any half-open interval of ``window`` seconds."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window - 1e-5:  # slots are kept to the microsecond
            start += 1
        best = max(best, end - start + 1)
    return best


# -- the algorithm --------------------------------------------------------------------------------


def test_gcra_burst_then_interval():
    tat = None
    decisions = []
    for _ in range(4):  # burst 3 at 2/s: three at once, then refused for 0.5 s
        new, decision = gcra(tat, 0.0, 0.5, 1.0, reserve=False)
        tat = new if new is not None else tat
        decisions.append((decision.allowed, decision.wait))
    assert decisions == [(True, 0.0), (True, 0.0), (True, 0.0), (False, 0.5)]
    new, decision = gcra(tat, 0.5, 0.5, 1.0, reserve=False)
    assert decision.allowed and new == 2.0


def test_gcra_reserving_queues_slots():
    tat = None
    waits = []
    for _ in range(3):
        tat, decision = gcra(tat, 10.0, 5.0, 0.0, reserve=True)
        waits.append(decision.wait)
    assert waits == [0.0, 5.0, 10.0]


# -- in process -----------------------------------------------------------------------------------


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


@pytest.mark.parametrize("rate", [0.2, 0.5, 2.0, 7.5])
def test_in_process_limiter_honours_any_rate_at_window_edges(rate):
    clock = FakeClock(now=100.9)  # just before a second's edge
    limiter = InProcessRateLimiter(clock=clock, sleep=clock.sleep)
    slots = [float(limiter.acquire("sms", rate)) for _ in range(12)]
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert gaps == pytest.approx([1 / rate] * 11)  # 0.2/s: one every 5 s
    assert clock.now == pytest.approx(100.9 + 11 / rate)


def test_rate_must_be_positive():
    with pytest.raises(ValueError, match="above 0"):
        InProcessRateLimiter().acquire("sms", 0.0)


# -- shared through Redis ---------------------------------------------------------------------


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.mark.redis
@pytest.mark.parametrize("rate", [0.2, 1.0, 5.0, 7.5])
def test_two_redis_limiters_share_one_spacing(client, rate):
    clock = FakeClock(now=1_700_000_000.95)  # 50 ms before a second's edge
    limiters = [
        RedisRateLimiter(client, prefix="test:rate", clock=clock, sleep=clock.sleep)
        for _ in range(2)
    ]
    slots = [float(limiters[n % 2].acquire("sms", rate)) for n in range(20)]

    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert gaps == pytest.approx([1 / rate] * 19, abs=1e-5)
    # A fixed window would grant 2 x the rate within a second at the edge; never here:
    assert max_in_any_window(slots, 1.0) == max(1, int(rate + 0.999))
    assert max_in_any_window(slots, 5.0) <= int(rate * 5) + 1
    other = RedisRateLimiter(client, prefix="test:rate", clock=clock, sleep=clock.sleep)
    before = clock.now
    other.acquire("email", rate)  # another channel: its own schedule, no wait
    assert clock.now == before


@pytest.mark.redis
def test_redis_limiters_in_threads_on_the_server_clock(client):
    """Real time, Redis's own clock, three processes' worth of limiters in threads: the granted
    slots (taken from Redis time) are spaced by the interval, whatever the threads' timing."""
    limiters = [RedisRateLimiter(client, prefix="test:rate") for _ in range(3)]
    slots: list[float] = []
    lock = threading.Lock()

    def burst(limiter: RedisRateLimiter) -> None:
        for _ in range(4):
            slot = float(limiter.acquire("sms", 20.0))
            with lock:
                slots.append(slot)

    threads = [threading.Thread(target=burst, args=(lim,)) for lim in limiters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ordered = sorted(slots)
    assert len(ordered) == 12
    assert min(b - a for a, b in itertools.pairwise(ordered)) >= 0.05 - 1e-5
    assert max_in_any_window(ordered, 0.1) <= 2
    assert 0 < client.pttl("test:rate:sms") <= 1050 + 50  # state expires once idle


def test_redis_failure_falls_back_to_spacing_in_process(caplog):
    clock = FakeClock()
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    breaker = RedisBreaker("outbound rate limit", pause=5.0, clock=clock)
    limiter = RedisRateLimiter(
        dead,
        clock=clock,
        sleep=clock.sleep,
        fallback=InProcessRateLimiter(clock=clock, sleep=clock.sleep),
        breaker=breaker,
    )
    for _ in range(3):
        limiter.acquire("sms", 0.5)
    assert clock.slept == [2.0, 2.0]  # still limited, by this process alone
    warnings = [r for r in caplog.records if "unavailable" in r.message]
    assert len(warnings) == 1  # once per outage, not per message
    assert "ConnectionError" in warnings[0].message


@pytest.mark.redis
def test_redis_limiter_returns_to_redis_after_the_pause(client, redis_url):
    clock = FakeClock()
    breaker = RedisBreaker("outbound rate limit", pause=5.0, clock=clock)
    breaker.failed(redis.ConnectionError("down"))
    limiter = RedisRateLimiter(client, prefix="test:rate", clock=clock, breaker=breaker)
    limiter.acquire("sms", 1.0)
    assert client.get("test:rate:sms") is None  # paused: the process's own spacing
    clock.now += 5.0
    limiter.acquire("sms", 1.0)
    assert float(client.get("test:rate:sms")) == pytest.approx(clock.now + 1.0)
    assert breaker.available()
