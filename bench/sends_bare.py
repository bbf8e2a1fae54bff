"""The bare baseline of ``bench.sends``: a dramatiq actor that makes the same provider call (the
fake SendGrid's ``POST /v3/mail/send``) and one ``UPDATE``, with nothing else: no claim, no
re-check, no rendering, no rate limit, no transition rows, no logging.

Loaded by ``dramatiq bench.sends_bare`` in the worker processes that ``bench.sends`` starts;
it reads its Redis, database and provider from ``BENCH_SENDS_REDIS``, ``BENCH_SENDS_DATABASE``
(a libpq URL) and ``BENCH_SENDS_PROVIDER``.
"""

from __future__ import annotations

import os
import threading

import dramatiq
import httpx
import psycopg
from dramatiq.brokers.redis import RedisBroker

BARE_QUEUE = "bare_sends"
SENDGRID_KEY = "SG.bench-key"

dramatiq.set_broker(
    RedisBroker(url=os.environ.get("BENCH_SENDS_REDIS", "redis://127.0.0.1:6391/11"))
)

_local = threading.local()
_client = httpx.Client(timeout=10.0)


def _connection() -> psycopg.Connection[tuple[object, ...]]:
    conn: psycopg.Connection[tuple[object, ...]] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["BENCH_SENDS_DATABASE"], autocommit=True)
        _local.conn = conn
    return conn


@dramatiq.actor(queue_name=BARE_QUEUE, max_retries=0)
def bare_send(survey_id: int) -> None:
    response = _client.post(
        os.environ["BENCH_SENDS_PROVIDER"] + "/v3/mail/send",
        json={
            "personalizations": [{"to": [{"email": f"c{survey_id}@example.test"}]}],
            "from": {"email": "surveys@shop.example"},
            "subject": "How likely are you to recommend us?",
            "content": [{"type": "text/plain", "value": "0-10?"}],
            "custom_args": {"survey_id": str(survey_id)},
        },
        headers={"Authorization": f"Bearer {SENDGRID_KEY}"},
    )
    response.raise_for_status()
    _connection().execute(
        "UPDATE surveys SET state = 'sent', sent_at = now(), provider_message_id = %s"
        " WHERE id = %s",
        (response.headers.get("X-Message-Id"), survey_id),
    )
