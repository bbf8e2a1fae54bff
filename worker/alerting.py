"""The detractor alert actor: ``deliver_detractor_alert(alert_id)`` on the queue ``alerts``.

The scheduler pass enqueues due alerts (``dispatch.alerts.enqueue_due_alerts``); this actor
claims the row before it sends anything, so a duplicate message sends nothing, and leaves a
failed attempt's next try to the row's due time, not to a delayed broker message. The queue is
its own so that alerts do not wait behind a backlog of survey sends.
"""

from __future__ import annotations

import threading

import httpx

from channels.base import Channel, ChannelName
from dispatch.alert_delivery import deliver
from models import utcnow
from wiring.runtime import get_runtime
from wiring.services import sender
from worker.broker import actor

__all__ = ["ALERTS_QUEUE", "WEBHOOK_TIMEOUT", "deliver_detractor_alert"]

ALERTS_QUEUE = "alerts"
#: Seconds to connect, send and read the receiver's answer; longer counts as a failed attempt.
WEBHOOK_TIMEOUT = 10.0

_lock = threading.Lock()
_clients: dict[str, httpx.Client] = {}


def _http() -> httpx.Client:
    with _lock:
        if "webhook" not in _clients:
            _clients["webhook"] = httpx.Client(timeout=WEBHOOK_TIMEOUT, follow_redirects=False)
        return _clients["webhook"]


def _email_channel() -> Channel | None:
    return sender(get_runtime()).channels.get(ChannelName.email)


# An exception (the database away) leaves the row queued, or delivering for the scheduler to
# recover: dramatiq's few retries only spare a wait for that.
@actor(ALERTS_QUEUE, max_retries=3, min_backoff=1000)
def deliver_detractor_alert(alert_id: int) -> None:
    """Deliver one detractor alert; safe to receive twice."""
    runtime = get_runtime()
    deliver(
        runtime.factory,
        alert_id,
        runtime.config,
        secret=runtime.settings.alert_signing_secret,
        http=_http(),
        email_channel=_email_channel() if runtime.config.alerts.detractor_email else None,
        clock=utcnow,
    )
