"""Web rate limits shared by every web process through a real Redis; open on Redis failure;
the proxy hop arithmetic behind NPS_TRUSTED_PROXIES."""

from __future__ import annotations

import ipaddress
import logging
import time

import pytest
import redis
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from dispatch.ratelimit import RedisBreaker
from tests.conftest import Database
from web.app import create_app, rate_limit_redis
from web.proxy import TrustedProxies, parse_networks
from web.ratelimit import RateLimit, RateRule

CUSTOMER = ("198.51.100.7", 40000)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def process(client: redis.Redis, clock: Clock, **kwargs) -> FastAPI:
    """One web process: its own middleware instance, the shared Redis."""
    app = FastAPI()

    @app.get("/s/{token}")
    def page(token: str) -> dict[str, str]:
        return {"token": token}

    app.add_middleware(
        RateLimit,
        rules=(RateRule("page", "/s/", per_second=0.5, burst=4),),
        clock=clock,
        redis_client=client,
        **kwargs,
    )
    return app


@pytest.fixture
def shared(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_two_web_processes_share_one_budget(shared):
    clock = Clock()
    first = TestClient(process(shared, clock), client=CUSTOMER)
    second = TestClient(process(shared, clock), client=CUSTOMER)

    statuses = [(first if n % 2 else second).get("/s/x").status_code for n in range(6)]

    assert statuses == [200, 200, 200, 200, 429, 429]  # a burst of 4 in all, not 4 each
    limited = first.get("/s/x")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"  # 0.5/s
    other = TestClient(process(shared, clock), client=("198.51.100.8", 1))
    assert other.get("/s/x").status_code == 200  # per client
    clock.now += 2.0  # one request refilled, seen by both processes
    assert second.get("/s/x").status_code == 200
    assert first.get("/s/x").status_code == 429
    keys = shared.keys("nps:web-rate:page:*")
    assert sorted(keys) == [b"nps:web-rate:page:198.51.100.7", b"nps:web-rate:page:198.51.100.8"]
    assert all(0 < shared.pttl(k) <= 9_000 for k in keys)  # gone once the bucket is full again


def test_redis_failure_fails_open_to_per_process_limits(caplog):
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    clock = Clock()
    breaker = RedisBreaker("web rate limits", pause=5.0, clock=clock)
    web = TestClient(process(dead, clock, breaker=breaker), client=CUSTOMER)

    with caplog.at_level(logging.WARNING):
        statuses = [web.get("/s/x").status_code for _ in range(5)]

    assert statuses == [200, 200, 200, 200, 429]  # served; a flood is still limited locally
    warnings = [r.message for r in caplog.records if "unavailable" in r.message]
    assert len(warnings) == 1 and "ConnectionError" in warnings[0]
    assert CUSTOMER[0] not in caplog.text


def test_back_on_redis_after_the_pause(shared):
    clock = Clock()
    breaker = RedisBreaker("web rate limits", pause=5.0, clock=clock)
    breaker.failed(redis.ConnectionError("blip"))
    web = TestClient(process(shared, clock, breaker=breaker), client=CUSTOMER)
    assert web.get("/s/x").status_code == 200
    assert shared.keys("nps:web-rate:*") == []  # paused: local buckets only
    clock.now += 5.0
    assert web.get("/s/x").status_code == 200
    assert shared.keys("nps:web-rate:*") == [b"nps:web-rate:page:198.51.100.7"]


def test_create_app_shares_limits_through_the_broker_redis(
    sqlite_db: Database, runtime_for, redis_url
):
    apps = [create_app(runtime_for(sqlite_db, NPS_BROKER_URL=redis_url)) for _ in range(2)]
    clients = [TestClient(app, client=CUSTOMER) for app in apps]
    started = time.monotonic()
    passed = 0
    for n in range(100):  # alternate between the two processes
        if clients[n % 2].get("/s/not-a-token").status_code == 429:
            break
        passed += 1
    elapsed = time.monotonic() - started
    # One burst of 30 (plus what refilled at 1/s meanwhile), where separate buckets would
    # have let 60 through.
    assert 30 <= passed <= 30 + int(elapsed) + 1
    assert redis.Redis.from_url(redis_url).exists("nps:web-rate:answer-page:198.51.100.7")


def test_create_app_serves_when_the_broker_redis_is_down(sqlite_db: Database, runtime_for):
    app = create_app(runtime_for(sqlite_db, NPS_BROKER_URL="redis://127.0.0.1:1/0"))
    client = TestClient(app, client=CUSTOMER)
    started = time.monotonic()
    assert [client.get("/s/not-a-token").status_code for _ in range(5)] == [403] * 5
    assert time.monotonic() - started < 5  # no retries, no waiting per request


def test_rate_limit_redis_client_gives_up_fast():
    client = rate_limit_redis("redis://127.0.0.1:1/0")
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert time.monotonic() - started < 1.0


# -- NPS_TRUSTED_PROXIES hop arithmetic ----------------------------------------------------------


def real_client(trusted: str, peer: str, forwarded_for: str) -> str:
    middleware = TrustedProxies(FastAPI(), parse_networks(trusted.split(",")))
    entries = forwarded_for.split(",") if forwarded_for else []
    return str(middleware.client_for(ipaddress.ip_address(peer), entries))


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded_for", "client"),
    [
        ("10.0.0.1", "10.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.0/8", "10.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # forged left
        ("10.0.0.0/8", "10.0.0.1", "198.51.100.1, 10.2.0.1", "198.51.100.1"),  # two hops
        ("10.0.0.0/8", "10.0.0.1", "10.3.0.1, 10.2.0.1", "10.3.0.1"),  # all trusted: leftmost
        ("10.0.0.0/8", "10.0.0.1", "", "10.0.0.1"),
        ("10.0.0.0/8", "10.0.0.1", "198.51.100.1:5123", "198.51.100.1"),
        ("10.0.0.0/8", "10.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.0/8", "10.0.0.1", "2001:db8::2", "2001:db8::2"),
        ("10.0.0.0/8", "10.0.0.1", "::ffff:198.51.100.9", "198.51.100.9"),
        ("10.0.0.0/8", "10.0.0.1", "198.51.100.1, unknown", "10.0.0.1"),  # not an address
        ("10.0.0.0/8", "10.0.0.1", "unknown, 10.2.0.1", "10.2.0.1"),
        ("fd00::/8", "fd00::5", "198.51.100.1", "198.51.100.1"),
    ],
)
def test_the_first_untrusted_hop_from_the_right_is_the_client(trusted, peer, forwarded_for, client):
    assert real_client(trusted, peer, forwarded_for) == client


def test_several_forwarded_headers_read_as_one_list() -> None:
    app = FastAPI()

    @app.get("/whoami")
    def whoami(request: Request) -> dict[str, str]:
        assert request.client is not None
        return {"client": request.client.host}

    app.add_middleware(TrustedProxies, trusted=parse_networks(["10.0.0.0/8"]))
    client = TestClient(app, client=("10.0.0.1", 1))
    response = client.get(
        "/whoami",
        headers=[("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "10.0.0.9")],
    )
    assert response.json() == {"client": "198.51.100.1"}
    untrusted = TestClient(app, client=("203.0.113.1", 1))
    assert untrusted.get("/whoami", headers={"X-Forwarded-For": "198.51.100.1"}).json() == {
        "client": "203.0.113.1"
    }
