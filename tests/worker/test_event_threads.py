"""The events queue's own threads (``worker.event_threads``).

A real dramatiq Worker on the test Redis, with the middleware and a queue of its own standing in
for the events queue: which threads run which queue's messages, that each message runs once and
is acknowledged, and that the messages taken ahead but not run when the worker stops go back to
Redis instead of waiting for the recovery of a dead worker's messages."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import dramatiq
import dramatiq.worker
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from cli.main import build_parser
from config.settings import (
    EVENT_THREADS_VARIABLE,
    WORKER_EVENT_THREADS,
    SettingsError,
    event_threads,
)
from worker.broker import _make_broker
from worker.event_threads import EventThreads, EventThreadsNotStarted

THREADS = 2
OWN_THREADS = 3

pytestmark = pytest.mark.redis


class Queues:
    """Two queues on one broker, ``events`` served by :class:`EventThreads`; each actor
    records the thread that ran each of its messages."""

    def __init__(self, redis_url: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.events, self.other = f"events_{tag}", f"other_{tag}"
        self.middleware = EventThreads(self.events)
        self.broker = RedisBroker(url=redis_url, middleware=[self.middleware])
        self.client = redis.Redis.from_url(redis_url)
        self.ran: dict[str, list[tuple[int, int]]] = {self.events: [], self.other: []}
        self.hold = threading.Event()
        self.hold.set()
        self._lock = threading.Lock()

        def record(queue: str) -> Callable[[int], None]:
            def run(n: int) -> None:
                self.hold.wait(10)
                with self._lock:
                    self.ran[queue].append((n, threading.get_ident()))

            return run

        self.actors = {
            queue: dramatiq.actor(broker=self.broker, queue_name=queue, actor_name=f"run_{queue}")(
                record(queue)
            )
            for queue in (self.events, self.other)
        }

    def send(self, queue: str, count: int) -> None:
        for n in range(count):
            self.actors[queue].send(n)

    def waiting(self, queue: str) -> int:
        """Messages on the queue's Redis list, not taken by any worker."""
        return int(self.client.llen(f"dramatiq:{queue}"))

    def unacknowledged(self) -> int:
        """Messages taken by a worker and neither acknowledged nor handed back."""
        return sum(
            int(self.client.scard(key)) for key in self.client.scan_iter("dramatiq:__acks__*")
        )

    def close(self) -> None:
        self.broker.flush_all()
        self.broker.close()
        self.client.close()


@pytest.fixture
def queues(redis_url: str) -> Iterator[Queues]:
    q = Queues(redis_url)
    try:
        yield q
    finally:
        q.close()


def _until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.02)


def test_the_events_queue_runs_on_its_own_threads_and_the_others_on_the_shared_ones(
    queues: Queues, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(EVENT_THREADS_VARIABLE, str(OWN_THREADS))
    queues.send(queues.events, 60)
    queues.send(queues.other, 60)
    worker = dramatiq.Worker(queues.broker, worker_threads=THREADS, worker_timeout=50)
    worker.start()
    try:
        shared = {t.ident for t in worker.workers if t.work_queue is worker.work_queue}
        own = {t.ident for t in worker.workers if t.work_queue is not worker.work_queue}
        assert len(shared) == THREADS and len(own) == OWN_THREADS
        _until(lambda: sum(len(ran) for ran in queues.ran.values()) == 120)
        queues.middleware.join(worker)
        worker.join()
    finally:
        worker.stop()
    events = queues.ran[queues.events]
    others = queues.ran[queues.other]
    # Each message once, acknowledged, and nothing left on the queues.
    assert sorted(n for n, _ in events) == list(range(60))
    assert sorted(n for n, _ in others) == list(range(60))
    assert queues.waiting(queues.events) == queues.waiting(queues.other) == 0
    assert queues.unacknowledged() == 0
    assert {thread for _, thread in others} <= shared
    assert {thread for _, thread in events} <= own
    assert len({thread for _, thread in events}) > 1


def test_messages_taken_ahead_go_back_to_redis_when_the_worker_stops(
    queues: Queues, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(EVENT_THREADS_VARIABLE, "1")
    monkeypatch.setattr(dramatiq.worker, "QUEUE_PREFETCH", 0)  # dramatiq's two a thread
    queues.hold.clear()
    queues.send(queues.events, 10)
    worker = dramatiq.Worker(queues.broker, worker_threads=THREADS, worker_timeout=50)
    worker.start()
    # The one own thread is held inside its first message, the others taken ahead wait in its
    # queue (dramatiq takes two per shared thread: 4 in all).
    _until(lambda: queues.waiting(queues.events) == 10 - 2 * THREADS)
    stopping = threading.Thread(target=worker.stop)
    stopping.start()
    # The threads are told to stop while one is still inside a message.
    _until(lambda: not any(thread.running for thread in worker.workers))
    queues.hold.set()
    stopping.join(30)
    assert not stopping.is_alive()
    ran_before_stop = len(queues.ran[queues.events])
    assert ran_before_stop == 1
    # What was taken and not run is back on the queue, nothing is left unacknowledged.
    assert queues.waiting(queues.events) == 10 - ran_before_stop
    assert queues.unacknowledged() == 0

    # A new worker runs the rest: every message once in all.
    again = dramatiq.Worker(queues.broker, worker_threads=THREADS, worker_timeout=50)
    again.start()
    try:
        _until(lambda: len(queues.ran[queues.events]) == 10)
        queues.middleware.join(again)
        again.join()
    finally:
        again.stop()
    assert Counter(n for n, _ in queues.ran[queues.events]) == Counter(range(10))
    assert queues.unacknowledged() == 0


def test_unset_the_events_queue_shares_the_threads(
    queues: Queues, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(EVENT_THREADS_VARIABLE, raising=False)
    queues.send(queues.events, 20)
    worker = dramatiq.Worker(queues.broker, worker_threads=THREADS, worker_timeout=50)
    worker.start()
    try:
        assert len(worker.workers) == THREADS
        _until(lambda: len(queues.ran[queues.events]) == 20)
        worker.join()
    finally:
        worker.stop()
    assert sorted(n for n, _ in queues.ran[queues.events]) == list(range(20))


@pytest.mark.parametrize("raw", ["-1", "three", "2.5", "²", "257"])
def test_a_bad_count_in_the_variable_is_refused_by_name(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(EVENT_THREADS_VARIABLE, raw)
    with pytest.raises(SettingsError, match=EVENT_THREADS_VARIABLE):
        event_threads()


def test_the_worker_command_passes_its_event_threads_to_dramatiqs_processes(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dramatiq.cli

    seen: dict[str, str | None] = {}

    def dramatiq_main() -> int:
        seen["threads"] = os.environ.get(EVENT_THREADS_VARIABLE)
        return 0

    monkeypatch.setattr(dramatiq.cli, "main", dramatiq_main)
    # The command sets the variable in this process: set here, it is removed again afterwards.
    monkeypatch.setenv(EVENT_THREADS_VARIABLE, "")
    for name, value in (
        ("NPS_BROKER_URL", redis_url),
        ("NPS_SECRET_KEY", "k"),
        ("NPS_INGEST_TOKEN", "t"),
        ("NPS_DASHBOARD_PASSWORD", "p"),
    ):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("sys.argv", ["nps-dispatch"])
    parser = build_parser()
    for argv, expected in (([], str(WORKER_EVENT_THREADS)), (["--event-threads", "0"], "0")):
        args = parser.parse_args(["worker", *argv])
        assert args.func(args) == 0
        assert seen["threads"] == expected


@pytest.mark.parametrize(
    ("given", "why"), [("-2", "at least 0"), ("many", "at least 0"), ("257", "at most 256")]
)
def test_the_worker_command_refuses_a_count_out_of_bounds(
    given: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--event-threads", given])
    err = capsys.readouterr().err
    assert "--event-threads" in err and why in err


def test_the_redis_broker_gives_the_events_queue_its_own_threads(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NPS_BROKER_URL", redis_url)
    broker = _make_broker()
    try:
        [own] = [m for m in broker.middleware if isinstance(m, EventThreads)]
        assert own.queue_name == "events"
    finally:
        broker.close()


def test_a_worker_with_a_bad_count_does_not_start(
    queues: Queues, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(EVENT_THREADS_VARIABLE, "lots")
    worker = dramatiq.Worker(queues.broker, worker_threads=THREADS, worker_timeout=50)
    with pytest.raises(EventThreadsNotStarted, match=EVENT_THREADS_VARIABLE):
        worker.start()
    assert worker.consumers == {} and worker.workers == []


def test_a_worker_told_to_consume_other_queues_starts_no_event_threads(
    queues: Queues, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(EVENT_THREADS_VARIABLE, str(OWN_THREADS))
    queues.send(queues.other, 5)
    worker = dramatiq.Worker(
        queues.broker, queues={queues.other}, worker_threads=THREADS, worker_timeout=50
    )
    worker.start()
    try:
        assert len(worker.workers) == THREADS and queues.events not in worker.consumers
        _until(lambda: len(queues.ran[queues.other]) == 5)
        worker.join()
    finally:
        worker.stop()
