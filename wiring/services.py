"""Builds a process's services from its runtime: answer links, the sender, the scheduler."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from channels.links import AnswerLinks
from channels.registry import channels_from_env
from dispatch.ratelimit import InProcessRateLimiter, RateLimiter, RedisRateLimiter
from dispatch.scheduler import Scheduler
from dispatch.sending import Sender
from wiring.runtime import Runtime

# A send still in `sending` this long after it began, with no callback and nothing in the
# provider's log, ends `send_unknown`.
GIVE_UP_AFTER = timedelta(hours=1)

_building = threading.Lock()


def answer_links(runtime: Runtime) -> AnswerLinks:
    if runtime.links is None:
        # Only `demo` runs without NPS_SECRET_KEY (the other commands refuse to start): the
        # runtime's per-process key there, since demo links live as long as the process.
        runtime.links = AnswerLinks(runtime.secret_key, runtime.settings.public_base_url)
    return runtime.links


def _rate_limiter(runtime: Runtime) -> RateLimiter:
    if runtime.settings.broker_url:
        import redis

        return RedisRateLimiter(redis.Redis.from_url(runtime.settings.broker_url))
    return InProcessRateLimiter()


def sender(runtime: Runtime) -> Sender:
    """The runtime's sender, built once: a worker process's threads all ask for it with their
    first message, and share its channels (their HTTP connection pools) and rate limiter."""
    if runtime.sender is None:
        with _building:
            if runtime.sender is None:
                runtime.sender = Sender(
                    runtime.factory,
                    channels_from_env(runtime.settings.env),
                    answer_links(runtime),
                    runtime.settings.public_base_url,
                    rate_limiter=_rate_limiter(runtime),
                )
    return runtime.sender


def scheduler(
    runtime: Runtime,
    *,
    enqueue_send: Callable[[int], object],
    enqueue_reminder: Callable[[int, int], object],
) -> Scheduler:
    """The scheduler with its hooks: due sends and reminders go to ``enqueue_*`` (the queue's
    actors, in the scheduler process); stuck sends are settled here through the sender's
    provider lookups.

    Before it is handed out, what was stored before pseudonyms were keyed is re-keyed, once per
    process (see :func:`ingest.subjects.rekey_legacy_pseudonyms`)."""
    from dispatch.responses import replay_unhandled_webhooks
    from ingest.subjects import rekey_legacy_pseudonyms

    if not runtime.rekeyed and runtime.settings.secret_key:
        runtime.rekeyed = (
            rekey_legacy_pseudonyms(runtime.factory, runtime.pseudonymiser) is not None
        )

    def settle(survey_id: int, now: datetime) -> object:
        return sender(runtime).settle(survey_id, runtime.config, now, GIVE_UP_AFTER)

    def replay(now: datetime) -> object:
        from ingest import platforms, shopify, woocommerce

        replay_unhandled_webhooks(runtime.factory, runtime.config, now=now)
        # Shop platform deliveries that failed on our side: WooCommerce never redelivers.
        return platforms.replay_unhandled(
            runtime.factory, runtime.config, [shopify.ADAPTER, woocommerce.ADAPTER], now=now
        )

    return Scheduler(
        runtime.factory,
        enqueue_send,
        enqueue_reminder=enqueue_reminder,
        settle=settle,
        replay_webhooks=replay,
    )
