"""Per-client rate limits for the public routes, and per-route body caps.

:class:`RateLimit` is ASGI middleware: each client may make ``burst`` requests at once, refilled
at ``per_second`` (GCRA, see :mod:`dispatch.ratelimit`). Over the limit it answers 429 with
``Retry-After`` before the route reads anything (``rate_limited`` in the error shape of
:mod:`web.errors`), counted in ``nps_rate_limited_requests_total{group}`` (the rule's name).

- **Which routes.** By default the answer page ``/s/...`` (people and mail scanners; its
  unsubscribe URL has a separate, looser bucket, because mailbox providers send RFC 8058 one-click
  unsubscribes for many users from a few addresses) and ``POST /v1/events`` (the shop; generous,
  batches of up to 1000 events are the intended use). Provider webhooks are not limited here: they
  come from the providers' many addresses and are refused by their signature check.
- **Which client.** The connection's address (``scope["client"]``), IPv6 by its /64 (one host
  usually owns a whole /64). Behind a load balancer, :class:`web.proxy.TrustedProxies` (setting
  ``NPS_TRUSTED_PROXIES``) puts the real client there; ``X-Forwarded-For`` is never read here,
  since anyone can send it. A request without an IP address (a Unix socket behind a proxy that
  passes no client address, an in-process client such as the demo's) is not limited: one shared
  bucket for everyone would lock every customer out at once.
- **Several web copies.** With ``NPS_BROKER_URL`` set, the buckets live in Redis and every web
  process shares them (one small Lua script per limited request, run off the event loop). When
  Redis fails, each process applies the same limits with its own buckets for a few seconds, then
  tries Redis again, and says so in the log once per outage: a Redis blip must not lock customers
  out, and a flood is still limited per process meanwhile. Without Redis, every process keeps its
  own buckets (with N copies a client gets up to N times the limit).
- Memory is bounded: at most ``max_clients`` local buckets per rule, the least recently seen
  dropped first (a dropped client starts again with a full bucket); Redis keys expire once a
  client's bucket is full again.

:func:`read_limited_body` caps one route's body below the app-wide ``web.limits.BodySizeLimit``.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio.to_thread
import redis
from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from dispatch.ratelimit import RedisBreaker, RedisGcra, gcra
from logs.metrics import RATE_LIMITED
from web.errors import ApiError, send_error

__all__ = [
    "DEFAULT_RULES",
    "Buckets",
    "RateLimit",
    "RateRule",
    "SharedBuckets",
    "TokenBuckets",
    "client_key",
    "read_limited_body",
]


@dataclass(frozen=True, slots=True)
class RateRule:
    """Requests whose path starts with ``prefix`` (and ends with ``suffix``, when given)."""

    name: str
    prefix: str
    per_second: float
    burst: int
    suffix: str | None = None

    def matches(self, path: str) -> bool:
        return path.startswith(self.prefix) and (self.suffix is None or path.endswith(self.suffix))


DEFAULT_RULES: tuple[RateRule, ...] = (
    RateRule("unsubscribe", "/s/", per_second=5.0, burst=200, suffix="/unsubscribe"),
    RateRule("answer-page", "/s/", per_second=1.0, burst=30),
    RateRule("events", "/v1/events", per_second=200.0, burst=400),
)
"""First match wins. A person answering makes about five requests; a shop sends batches."""


class Buckets(Protocol):
    def take(self, key: str) -> float:
        """Take one request for ``key``: ``0.0`` when allowed, else the seconds to wait."""


def _rate(per_second: float, burst: int) -> tuple[float, float]:
    """GCRA's interval and tolerance for ``burst`` requests at once, refilled at ``per_second``."""
    if per_second <= 0 or burst < 1:
        raise ValueError("a rate limit needs per_second > 0 and burst >= 1")
    interval = 1.0 / per_second
    return interval, interval * (burst - 1)


class TokenBuckets:
    """One bucket per key in this process; thread-safe; at most ``max_keys`` keys (LRU)."""

    def __init__(
        self,
        per_second: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.interval, self.tolerance = _rate(per_second, burst)
        self.clock = clock
        self.max_keys = max_keys
        self._tat: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one token: ``0.0`` when allowed, else the seconds until one is available."""
        now = self.clock()
        with self._lock:
            old = self._tat.pop(key, None)
            new, decision = gcra(old, now, self.interval, self.tolerance, reserve=False)
            tat = new if new is not None else old
            if tat is not None:
                self._tat[key] = tat
            while len(self._tat) > self.max_keys:
                self._tat.popitem(last=False)
        return 0.0 if decision.allowed else decision.wait

    def __len__(self) -> int:
        return len(self._tat)


class SharedBuckets:
    """The buckets of one rule in Redis, shared by every web process; ``local`` answers while
    ``breaker`` says Redis is failing."""

    def __init__(
        self,
        store: RedisGcra,
        name: str,
        per_second: float,
        burst: int,
        *,
        local: TokenBuckets,
        breaker: RedisBreaker,
        prefix: str = "nps:web-rate",
    ) -> None:
        self.interval, self.tolerance = _rate(per_second, burst)
        self.store = store
        self.local = local
        self.breaker = breaker
        self.prefix = f"{prefix}:{name}:"

    def take(self, key: str) -> float:
        if not self.breaker.available():
            return self.local.take(key)
        try:
            decision = self.store.take(
                self.prefix + key, self.interval, self.tolerance, reserve=False
            )
        except redis.RedisError as exc:
            self.breaker.failed(exc)
            return self.local.take(key)
        self.breaker.succeeded()
        return 0.0 if decision.allowed else decision.wait


def client_key(scope: Scope) -> str | None:
    """The client's address; IPv6 by /64, an IPv4-mapped IPv6 address as IPv4; ``None`` when
    the connection has no IP address."""
    client = scope.get("client")
    if not client:
        return None
    try:
        address = ipaddress.ip_address(str(client[0]))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


class RateLimit:
    """ASGI middleware: 429 with ``Retry-After`` for a client over its rule's limit.

    ``redis_client``: share the buckets through Redis (give it short timeouts: a request waits
    for it); ``None`` keeps them in this process. ``clock`` is the local buckets' clock, and the
    shared ones' too when given (tests); by default the shared buckets use the Redis server's
    clock, the same for every process."""

    def __init__(
        self,
        app: ASGIApp,
        rules: Sequence[RateRule] = DEFAULT_RULES,
        *,
        clock: Callable[[], float] | None = None,
        max_clients: int = 100_000,
        redis_client: redis.Redis | None = None,
        breaker: RedisBreaker | None = None,
    ) -> None:
        self.app = app
        self.rules = tuple(rules)
        local_clock = clock or time.monotonic
        self._buckets: dict[str, Buckets] = {}
        self.shared = redis_client is not None
        store = RedisGcra(redis_client, clock) if redis_client is not None else None
        breaker = breaker or RedisBreaker("web rate limits")
        for rule in self.rules:
            RATE_LIMITED.labels(group=rule.name)  # exposed at 0 before the first refusal
            local = TokenBuckets(
                rule.per_second, rule.burst, clock=local_clock, max_keys=max_clients
            )
            self._buckets[rule.name] = (
                local
                if store is None
                else SharedBuckets(
                    store, rule.name, rule.per_second, rule.burst, local=local, breaker=breaker
                )
            )

    def _rule_for(self, path: str) -> RateRule | None:
        return next((rule for rule in self.rules if rule.matches(path)), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self._rule_for(str(scope.get("path", "")))
        key = client_key(scope) if rule is not None else None
        if rule is not None and key is not None:
            buckets = self._buckets[rule.name]
            if self.shared:  # a network round trip: not on the event loop
                wait = await anyio.to_thread.run_sync(buckets.take, key)
            else:
                wait = buckets.take(key)
            if wait > 0:
                RATE_LIMITED.labels(group=rule.name).inc()
                await self._refuse(scope, send, wait)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, wait: float) -> None:
        seconds = max(1, math.ceil(wait))
        await send_error(
            scope,
            send,
            429,
            "rate_limited",
            f"too many requests; try again in {seconds} s",
            headers={"Retry-After": str(seconds), "Cache-Control": "no-store"},
        )


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (checked on ``Content-Length``
    and while streaming, so an oversized body is never buffered whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> ApiError:
    # Built only when refusing: an exception is costly to build on every request.
    return ApiError(413, "payload_too_large", f"request body larger than {limit} bytes")
