"""The demo's simulated customers: they answer through the real HTTP routes, correctly signed.

SMS invitees get a Twilio delivery callback and may reply (a score, a comment, or STOP); email
invitees get SendGrid events (delivered, some bounces and spam reports) and may open their score
link (a GET that records nothing, as a mail scanner's would) and post the score and a comment.

They are built so that non-response bias shows: loyal customers (repeat buyers) answer more
often and score higher, so the raw NPS of those who answered flatters the shop, and the
non-response-adjusted NPS of the report corrects it.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi.testclient import TestClient
from sqlalchemy import select

from channels.sendgrid_email import fake as sendgrid_fake
from channels.sendgrid_email.fake import SendGridSigner
from channels.twilio_sms import fake as twilio_fake
from channels.twilio_sms.fake import TwilioSigner
from demo.simulation import SimulatedCustomer
from models import Customer, Survey
from wiring.runtime import Runtime
from wiring.services import answer_links

DEMO_TWILIO_TOKEN = "demo-twilio-auth-token"  # signs the demo's own simulated callbacks only
SHOP_NUMBER = "+15005550006"


@dataclass
class DemoSigner:
    """Signs the demo's simulated provider requests as Twilio and SendGrid do, with demo-only
    keys (the channels' own fakes)."""

    public_base_url: str
    twilio: TwilioSigner
    sendgrid: SendGridSigner

    @classmethod
    def create(cls, public_base_url: str) -> DemoSigner:
        return cls(public_base_url.rstrip("/"), TwilioSigner(DEMO_TWILIO_TOKEN), SendGridSigner())

    @property
    def sendgrid_public_key(self) -> str:
        return self.sendgrid.public_key

    def twilio_headers(self, path: str, params: dict[str, str]) -> dict[str, str]:
        return self.twilio.headers(f"{self.public_base_url}{path}", params)

    def sendgrid_headers(self, body: str) -> dict[str, str]:
        return self.sendgrid.headers(body)


def _score_for(customer: SimulatedCustomer, rng: random.Random) -> int:
    repeat = 1.0 if customer.previous_orders > 0 else 0.0
    return max(0, min(10, round(5.6 + 2.4 * repeat + 1.2 * customer.loyalty + rng.gauss(0, 1.5))))


def _answers(customer: SimulatedCustomer, rng: random.Random) -> bool:
    # Repeat buyers and the more loyal answer more: the source of non-response bias.
    repeat = 1.0 if customer.previous_orders > 0 else 0.0
    logit = -1.8 + 2.4 * repeat + 0.4 * customer.loyalty
    return rng.random() < 1 / (1 + math.exp(-logit))


COMMENTS = {
    "promoter": ["Fast delivery and great quality", "Love it", "Easy checkout"],
    "passive": ["Fine, a bit pricey", "Delivery took a while"],
    "detractor": ["Arrived damaged", "Support never answered", "Not as described"],
}


def _comment(score: int, rng: random.Random) -> str:
    band = "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"
    return rng.choice(COMMENTS[band])


def simulate_customers(
    runtime: Runtime,
    client: TestClient,
    signer: DemoSigner,
    customers: dict[str, SimulatedCustomer],
    seed: int,
) -> Counter[str]:
    """Every sent survey's customer reacts once. Returns what happened, by kind."""
    rng = random.Random(seed)
    with runtime.factory() as session:
        rows = session.execute(
            select(
                Survey.id,
                Survey.channel,
                Survey.provider_message_id,
                Customer.external_id,
                Customer.phone,
            )
            .join(Customer, Customer.id == Survey.customer_id)
            .where(Survey.state == "sent")
            .order_by(Survey.id)
        ).all()
    links = answer_links(runtime)
    happened: Counter[str] = Counter()
    email_events: list[dict[str, Any]] = []
    for survey_id, channel, message_id, external_id, phone in rows:
        customer = customers.get(external_id)
        if customer is None:
            continue
        if channel == "sms" and phone is not None:
            _sms_customer(client, signer, customer, survey_id, message_id, phone, rng, happened)
        else:
            _email_customer(
                client, links, customer, survey_id, message_id, rng, happened, email_events
            )
    if email_events:
        body = json.dumps(email_events)
        response = client.post(
            "/webhooks/sendgrid/events", content=body, headers=signer.sendgrid_headers(body)
        )
        happened[f"sendgrid batch: HTTP {response.status_code}"] += 1
    return happened


def _sms_customer(
    client: TestClient,
    signer: DemoSigner,
    customer: SimulatedCustomer,
    survey_id: int,
    message_id: str | None,
    phone: str,
    rng: random.Random,
    happened: Counter[str],
) -> None:
    path = f"/webhooks/twilio/status?survey_id={survey_id}"
    status = twilio_fake.status_callback(
        message_id or f"SMdemo{survey_id}", "delivered", to=phone, sender=SHOP_NUMBER
    )
    client.post(path, data=status, headers=signer.twilio_headers(path, status))
    happened["sms delivered"] += 1
    if rng.random() < 0.04:
        _inbound(client, signer, phone, "STOP", f"SMstop{survey_id}")
        happened["sms STOP"] += 1
        return
    if not _answers(customer, rng):
        return
    score = _score_for(customer, rng)
    _inbound(
        client,
        signer,
        phone,
        rng.choice([f"{score}", f"{score}/10", f" {score}!"]),
        f"SMscore{survey_id}",
    )
    _inbound(client, signer, phone, _comment(score, rng), f"SMcomment{survey_id}")
    happened["sms answered"] += 1


def _inbound(client: TestClient, signer: DemoSigner, phone: str, body: str, sid: str) -> None:
    path = "/webhooks/twilio/inbound"
    params = twilio_fake.inbound_sms(sid, sender=phone, to=SHOP_NUMBER, body=body)
    client.post(path, data=params, headers=signer.twilio_headers(path, params))


def _email_customer(
    client: TestClient,
    links: Any,
    customer: SimulatedCustomer,
    survey_id: int,
    message_id: str | None,
    rng: random.Random,
    happened: Counter[str],
    events: list[dict[str, Any]],
) -> None:
    def event(kind: str, **extra: Any) -> dict[str, Any]:
        return sendgrid_fake.event(
            kind,
            survey_id=survey_id,
            message_id=f"{message_id}.demo",
            email=f"{customer.id}@example.com",
            event_id=f"demo-{kind}-{survey_id}",
            timestamp=int(time.time()),
            **extra,
        )

    roll = rng.random()
    if roll < 0.04:
        events.append(event("bounce", type="bounce", status="5.1.1"))
        happened["email bounced"] += 1
        return
    events.append(event("delivered"))
    if roll < 0.06:
        events.append(event("spamreport"))
        happened["email spam report"] += 1
        return
    happened["email delivered"] += 1
    if not _answers(customer, rng):
        return
    from datetime import timedelta

    from models import utcnow

    score = _score_for(customer, rng)
    url = urlsplit(links.url_for(survey_id, utcnow() + timedelta(days=1), score=score))
    page = f"{url.path}?{url.query}"
    client.get(page)  # what a mail scanner does too: it must record nothing
    client.post(url.path, data={"score": str(score)})
    client.post(url.path, data={"comment": _comment(score, rng)})
    happened["email answered"] += 1
