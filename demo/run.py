"""`nps-dispatch demo`: the whole product in one process on the embedded defaults.

SQLite, the in-process dramatiq broker with a real dramatiq Worker, the console channel, and a
simulated shop whose events go through the real queue actor. Delays are scaled to seconds. It
ends with the report, then serves the dashboard until Ctrl-C (:mod:`demo.serve`).
"""

from __future__ import annotations

import io
import logging
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from sqlalchemy import func, select

from config.settings import environ, use_in_process_broker
from demo.customers import DEMO_TWILIO_TOKEN, DemoSigner, simulate_customers
from demo.operator_config import DEMO_CONFIG
from demo.serve import dashboard_password, database_url, serve_dashboard
from demo.simulation import SimulatedCustomer
from models import DeadLetter, InboundEvent, Order, SkippedPurchase, Survey
from wiring.runtime import Runtime

PENDING = ("waiting_anchor", "scheduled", "queued", "sending")
SHOWN_STATES = (*PENDING, "sent", "withdrawn", "suppressed", "failed")


def run_demo(
    events: int = 300,
    seed: int = 7,
    database: str | None = None,
    shop: str = "events",
    *,
    serve: bool = False,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> int:
    """``shop``: ``"events"`` sends the simulated shop's events to the queue actor;
    ``"shopify"`` sends them as signed Shopify webhooks to ``POST /webhooks/shopify``.
    ``database``: a SQLAlchemy URL or a SQLite file path. ``serve``: after the report, serve
    the dashboard on ``host:port`` until Ctrl-C."""
    console = Console()
    password = dashboard_password(environ())
    # The demo shows its own tables; per-event log lines would drown them.
    logging.getLogger().setLevel(logging.WARNING)
    use_in_process_broker()  # the demo always uses the in-process broker
    workdir = Path(tempfile.mkdtemp(prefix="nps-demo-"))
    db_url = database_url(database, f"sqlite:///{workdir / 'demo.db'}")
    base_url = f"http://localhost:{port}"
    config_path = workdir / "nps-dispatch.toml"
    config_path.write_text(DEMO_CONFIG, encoding="utf-8")

    from dramatiq import Worker

    from channels.base import ChannelName
    from channels.console.send import ConsoleChannel
    from config.settings import Settings
    from demo.shopify import DEMO_SHOPIFY_SECRET
    from dispatch.sending import Sender
    from migrations.runner import upgrade
    from wiring.runtime import set_runtime
    from wiring.services import answer_links
    from worker.broker import broker

    signer = DemoSigner.create(base_url)
    settings = Settings.from_env(
        {
            "NPS_DATABASE_URL": db_url,
            "NPS_CONFIG": str(config_path),
            "NPS_PUBLIC_BASE_URL": base_url,
            "NPS_DASHBOARD_PASSWORD": password,
            # Only to verify the demo's own simulated, correctly signed provider callbacks; no
            # provider is configured for sending, so every message goes to the console.
            "TWILIO_AUTH_TOKEN": DEMO_TWILIO_TOKEN,
            "SENDGRID_WEBHOOK_PUBLIC_KEY": signer.sendgrid_public_key,
            "SHOPIFY_WEBHOOK_SECRET": DEMO_SHOPIFY_SECRET,
        }
    )
    runtime = Runtime.from_settings(settings)
    upgrade(runtime.engine)
    set_runtime(runtime)
    outbox = io.StringIO()
    consoles = {
        ChannelName.email: ConsoleChannel(ChannelName.email, stream=outbox),
        ChannelName.sms: ConsoleChannel(ChannelName.sms, stream=outbox),
    }
    runtime.sender = Sender(
        runtime.factory, dict(consoles), answer_links(runtime), settings.public_base_url
    )
    console.print(
        Panel.fit(
            "[bold]nps-dispatch demo[/]: a simulated shop, the real ingest, scheduler and "
            f"sender,\nSQLite at {db_url}, the in-process broker, console channels.\n"
            f"Config {runtime.config.version}: delays scaled to seconds.",
            border_style="cyan",
        )
    )
    worker = Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    started = time.monotonic()
    try:
        if shop == "shopify":
            customers = _shopify_phase(console, runtime, events, seed)
        else:
            customers = _ingest_phase(console, runtime, events, seed)
        _summary_table(console, runtime)
        _schedule_phase(console, runtime)
        _show_messages(console, [m for c in consoles.values() for m in c.sent])
        _timing_table(console, runtime)
        _answer_phase(console, runtime, signer, customers, seed)
        _report_phase(console, runtime)
        console.print(
            f"[dim]demo finished in {time.monotonic() - started:.1f}s; database kept at {db_url}[/]"
        )
        if serve:
            serve_dashboard(console, runtime, password, host, port)
    finally:
        worker.stop()
        set_runtime(None)
    return 0


def _count(runtime: Runtime, query: Any) -> int:
    with runtime.factory() as session:
        return int(session.scalar(query) or 0)


def _ingest_phase(
    console: Console, runtime: Runtime, events: int, seed: int
) -> dict[str, SimulatedCustomer]:
    from demo.simulation import SimulatedShop
    from worker.actors import ingest_event
    from worker.broker import EVENTS_QUEUE, broker

    simulated = SimulatedShop(seed=seed)
    stream = simulated.events(events)
    junk: list[dict[str, Any]] = [
        {"type": "purchase.completed", "event_id": "sim-junk-1", "occurred_at": "yesterday"},
        {"type": "order.teleported", "event_id": "sim-junk-2"},
    ]
    stream.extend(junk)
    duplicates = len(stream) - len({e.get("event_id") for e in stream})
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as progress:
        sent = progress.add_task("shop -> queue 'events'", total=len(stream))
        for event in stream:
            ingest_event.send(event)
            progress.advance(sent)
        done = progress.add_task("worker: ingested", total=len(stream))
        while True:
            handled = (
                _count(runtime, select(func.count()).select_from(InboundEvent))
                + _count(runtime, select(func.count()).select_from(DeadLetter))
                + duplicates
            )
            progress.update(done, completed=min(handled, len(stream)))
            if handled >= len(stream):
                break
            time.sleep(0.2)
        broker.join(EVENTS_QUEUE)
    console.print(
        f"{len(stream)} events sent, {duplicates} of them twice; {len(junk)} malformed events "
        "went to the dead-letter store (`nps-dispatch deadletters list`)."
    )
    return {customer.id: customer for customer in simulated.customers}


def _shopify_phase(
    console: Console, runtime: Runtime, events: int, seed: int
) -> dict[str, SimulatedCustomer]:
    from fastapi.testclient import TestClient

    from demo.shopify import (
        post_to_shopify_route,
        shopify_app,
        shopify_customers,
        shopify_webhooks,
    )
    from demo.simulation import SimulatedShop

    simulated = SimulatedShop(seed=seed)
    webhooks = shopify_webhooks(simulated.events(events))
    with (
        TestClient(shopify_app(runtime)) as client,
        Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
        ) as progress,
    ):
        task = progress.add_task("Shopify -> POST /webhooks/shopify", total=len(webhooks))
        answers = post_to_shopify_route(
            client, webhooks, on_answer=lambda _: progress.advance(task)
        )
    events_seen = {k.removeprefix("event "): n for k, n in answers.items() if k.startswith("event")}
    console.print(
        f"{len(webhooks)} signed Shopify webhooks (orders/paid, fulfillments/update, "
        "orders/cancelled, refunds/create) went through the Shopify adapter: "
        + ", ".join(f"{k} {n}" for k, n in sorted(answers.items()) if not k.startswith("event"))
        + "; their events: "
        + ", ".join(f"{k} {n}" for k, n in sorted(events_seen.items()))
        + ". An order delivered twice is a duplicate event; the order without an id is in the "
        "dead-letter store (`nps-dispatch deadletters list`)."
    )
    return shopify_customers(simulated.customers)


def _summary_table(console: Console, runtime: Runtime) -> None:
    with runtime.factory() as session:
        purchases = session.scalar(
            select(func.count()).select_from(Order).where(Order.purchased_at.is_not(None))
        )
        by_channel = session.execute(
            select(Survey.channel, func.count()).group_by(Survey.channel).order_by(Survey.channel)
        ).all()
        by_reason = session.execute(
            select(SkippedPurchase.reason, func.count())
            .group_by(SkippedPurchase.reason)
            .order_by(func.count().desc())
        ).all()
        withdrawn = session.scalar(
            select(func.count()).select_from(Survey).where(Survey.state == "withdrawn")
        )
    table = Table(title="Every purchase accounted for", show_footer=True)
    table.add_column("outcome", footer="purchases")
    table.add_column("count", justify="right", footer=str(purchases))
    for channel, count in by_channel:
        table.add_row(f"survey planned: {channel}", str(count))
    for reason, count in by_reason:
        table.add_row(f"skipped: {reason}", str(count))
    console.print(table)
    console.print(f"(of the planned surveys, {withdrawn} were withdrawn by a later cancellation)")


def _state_table(runtime: Runtime) -> Table:
    with runtime.factory() as session:
        counts = {
            state: n
            for state, n in session.execute(
                select(Survey.state, func.count()).group_by(Survey.state)
            ).all()
        }
    table = Table(
        title="Schedule: survey states (the database is the schedule)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for state in SHOWN_STATES:
        table.add_column(state.replace("_", " "), justify="right", no_wrap=True)
    table.add_row(*(str(counts.get(s, 0)) for s in SHOWN_STATES))
    return table


def _schedule_phase(console: Console, runtime: Runtime) -> None:
    from worker.broker import SENDS_QUEUE, broker
    from worker.scheduling import build_scheduler

    scheduler = build_scheduler(runtime)
    deadline = time.monotonic() + 40
    with Live(_state_table(runtime), console=console, refresh_per_second=4) as live:
        while time.monotonic() < deadline:
            scheduler.tick(runtime.config)
            live.update(_state_table(runtime))
            pending = select(func.count()).select_from(Survey).where(Survey.state.in_(PENDING))
            if not _count(runtime, pending):
                break
            time.sleep(0.25)
        broker.join(SENDS_QUEUE)
        live.update(_state_table(runtime))


def _show_messages(console: Console, sent: list[Any]) -> None:
    sms = next((m for m in sent if m.channel == "sms"), None)
    email = next((m for m in sent if m.channel == "email"), None)
    lines = []
    if sms is not None:
        lines.append(f"[bold]SMS[/] for survey {sms.survey_id}: {sms.body_text}")
    if email is not None:
        first_link = next((w for w in email.body_text.split() if "/s/" in w), "")
        lines.append(
            f"[bold]Email[/] for survey {email.survey_id}: {email.subject!r}, eleven signed "
            f"score links such as\n  {first_link}"
        )
    console.print(Panel("\n".join(lines), title="console channel: what customers received"))


def _timing_table(console: Console, runtime: Runtime) -> None:
    with runtime.factory() as session:
        rows = session.execute(
            select(Survey.arm, Survey.anchor_kind, Survey.anchor_at, Survey.sent_at).where(
                Survey.sent_at.is_not(None), Survey.anchor_at.is_not(None)
            )
        ).all()
    per_arm: dict[str, list[float]] = {}
    anchors: Counter[str] = Counter()
    for arm, anchor_kind, anchor_at, sent_at in rows:
        if anchor_at is None or sent_at is None:
            continue
        per_arm.setdefault(arm or "-", []).append((sent_at - anchor_at).total_seconds())
        anchors[anchor_kind or "-"] += 1
    table = Table(title="Time from anchor to send, per delay arm (seconds)")
    for column in ("arm", "sent", "mean", "min", "max"):
        table.add_column(column, justify="right")
    for arm, values in sorted(per_arm.items()):
        table.add_row(
            arm,
            str(len(values)),
            f"{statistics.mean(values):.1f}",
            f"{min(values):.1f}",
            f"{max(values):.1f}",
        )
    console.print(table)
    console.print("anchors used: " + ", ".join(f"{k} {v}" for k, v in anchors.most_common()))


def _answer_phase(
    console: Console,
    runtime: Runtime,
    signer: DemoSigner,
    customers: dict[str, SimulatedCustomer],
    seed: int,
) -> None:
    from fastapi.testclient import TestClient

    from web.app import create_app

    console.rule("Customers answer, through the real HTTP routes")
    with TestClient(create_app(runtime)) as client:
        happened = simulate_customers(runtime, client, signer, customers, seed)
    table = Table(title="What the simulated customers did (signed webhooks, the answer page)")
    table.add_column("event")
    table.add_column("count", justify="right")
    for kind, count in sorted(happened.items()):
        table.add_row(kind, str(count))
    console.print(table)
    console.print(_state_table(runtime))


def _report_phase(console: Console, runtime: Runtime) -> None:
    from models import utcnow
    from reports.build import build_report
    from reports.render import render_table
    from worker.scheduling import build_scheduler

    # Close every response window now, as the scheduler would when it ends: silence becomes a
    # recorded no_response, which is what the report weighs the answers against.
    build_scheduler(runtime).tick(runtime.config, utcnow() + runtime.config.survey.response_window)
    console.rule("The report: `nps-dispatch report`")
    report = build_report(
        runtime.factory,
        runtime.config,
        by="channel",
        now=utcnow() + runtime.config.survey.response_window,
    )
    render_table(report, console)
    adjusted = report["adjusted"] or {}
    if report["nps"] is not None and adjusted.get("nps") is not None:
        raw, fair = report["nps"], adjusted["nps"]
        console.print(
            f"[bold]Raw NPS {raw:.1f}, adjusted {fair:.1f}[/]. In this simulated shop repeat "
            "buyers answer more often and score higher, so the answers over-represent them; "
            "the adjusted NPS weighs each answer by how unlikely its kind of customer was to "
            f"reply{' and comes out lower' if fair < raw else ''}."
        )
