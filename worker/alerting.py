"""The detractor alert actor: ``deliver_detractor_alert(alert_id)`` on the queue ``alerts``.

The scheduler pass enqueues due alerts (``dispatch.alerts.enqueue_due_alerts``); this actor
claims the row before it sends anything, so a duplicate message sends nothing, and leaves a
failed attempt's next try to the row's due time, not to a delayed broker message. The queue is
its own so that alerts do not wait behind a backlog of survey sends. As in ``worker.actors``,
what the actor runs is imported when it first runs, so that loading the actors stays light.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from wiring.runtime import get_runtime
from worker.broker import actor

if TYPE_CHECKING:
    import httpx

__all__ = ["ALERTS_QUEUE", "WEBHOOK_TIMEOUT", "deliver_detractor_alert"]

ALERTS_QUEUE = "alerts"
#: Seconds to connect, send and read the receiver's answer; longer counts as a failed attempt.
WEBHOOK_TIMEOUT = 10.0

_lock = threading.Lock()
_clients: dict[str, httpx.Client] = {}


def _http() -> httpx.Client:
    """The process's one client for alert webhooks (redirects are not followed)."""
    import httpx

    with _lock:
        if "webhook" not in _clients:
            _clients["webhook"] = httpx.Client(timeout=WEBHOOK_TIMEOUT, follow_redirects=False)
        return _clients["webhook"]


# An exception (the database away) leaves the row queued, or delivering for the scheduler to
# recover: dramatiq's few retries only spare a wait for that.
@actor(ALERTS_QUEUE, max_retries=3, min_backoff=1000)
def deliver_detractor_alert(alert_id: int) -> None:
    """Deliver one detractor alert; safe to receive twice."""
    from channels.base import ChannelName
    from dispatch.alert_delivery import deliver
    from models import utcnow
    from wiring.services import sender

    runtime = get_runtime()
    email = None
    if runtime.config.alerts.detractor_email is not None:
        email = sender(runtime).channels.get(ChannelName.email)
    deliver(
        runtime.factory,
        alert_id,
        runtime.config,
        secret=runtime.settings.alert_signing_secret,
        http=_http(),
        email_channel=email,
        clock=utcnow,
    )
