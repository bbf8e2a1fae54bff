"""The report over a real database (SQLite and PostgreSQL) against references computed here.

Surveys are seeded with core INSERTs from plain Python lists of cases; every expected figure
(counts, NPS and its adjusted-Wald interval, dispositions, AAPOR rates, the funnel, segments,
ISO weeks, delay buckets, the propensity-weighted NPS) is recomputed from those lists in this
file, by hand formulas or by an independent statsmodels fit, never by the report's own code.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
import statsmodels.api as sm
from sqlalchemy import insert, select

from models import Customer, Order, SkippedPurchase, Survey
from reports.build import build_report
from reports.params import ReportError
from reports.query import Period
from tests.conftest import Database

Z = 1.959963984540054
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
FAR_FUTURE = datetime(2099, 1, 1, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)

# AAPOR codes of the final states, written out here independently of models.lifecycle.
CODE = {
    "completed": "I",
    "answered": "P",
    "partial": "P",
    "opted_out": "R",
    "no_response": "NC",
    "undeliverable": "UO",
    "send_unknown": "UO",
    "failed": "UH",
    "withdrawn": "NE",
    "suppressed": "NE",
}
INVITED = {
    "sent",
    "delivered",
    "answered",
    "partial",
    "completed",
    "undeliverable",
    "opted_out",
    "no_response",
}
ANSWERED = {"answered", "partial", "completed"}
BEFORE_SEND = {"waiting_anchor", "scheduled", "queued", "sending"}


# --------------------------------------------------------------------------- seeding


@dataclass
class Case:
    """One purchase with its survey (or skip)."""

    state: str | None  # None: no survey (see skip)
    purchased_at: datetime
    score: int | None = None
    channel: str = "email"
    category: str | None = "books"
    total: float | None = 50.0
    previous_orders: int | None = 0
    country: str | None = "DE"
    arm: str | None = None
    anchor_hours: float | None = 48.0  # anchor = purchase + this
    delay_hours: float | None = 72.0  # sent = anchor + this (when sent)
    delivered: bool = False
    window_open: bool = False  # for sent/delivered: closes_at in the future
    skip: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def anchor_at(self) -> datetime | None:
        if self.anchor_hours is None:
            return None
        return self.purchased_at + timedelta(hours=self.anchor_hours)

    @property
    def sent_at(self) -> datetime | None:
        if self.state not in INVITED or self.delay_hours is None:
            return None
        base = self.anchor_at or self.purchased_at
        return base + timedelta(hours=self.delay_hours)

    @property
    def is_open(self) -> bool:
        return self.state in ("sent", "delivered") and self.window_open

    @property
    def responded(self) -> bool:
        return self.state in ANSWERED


def seed(db: Database, cases: list[Case], prefix: str = "r") -> None:
    """Core INSERTs: one customer and one order per case, then surveys and skips."""
    with db.session() as s, s.begin():
        s.execute(
            insert(Customer),
            [
                {
                    "external_id": f"{prefix}-c-{i}",
                    "email_status": "valid",
                    "phone_status": "missing",
                    "created_at": c.purchased_at,
                    "updated_at": c.purchased_at,
                }
                for i, c in enumerate(cases)
            ],
        )
        customers = dict(
            s.execute(
                select(Customer.external_id, Customer.id).where(
                    Customer.external_id.like(f"{prefix}-c-%")
                )
            ).all()
        )
        s.execute(
            insert(Order),
            [
                {
                    "external_id": f"{prefix}-o-{i}",
                    "customer_id": customers[f"{prefix}-c-{i}"],
                    "purchased_at": c.purchased_at,
                    "total_amount": c.total,
                    "currency": "EUR",
                    "category": c.category,
                    "sales_channel": "web",
                    "country": c.country,
                    "previous_orders": c.previous_orders,
                    "is_test": c.skip == "excluded_test_order",
                    "created_at": c.purchased_at,
                }
                for i, c in enumerate(cases)
            ],
        )
        orders = dict(
            s.execute(
                select(Order.external_id, Order.id).where(Order.external_id.like(f"{prefix}-o-%"))
            ).all()
        )
        surveys = [
            {
                "order_id": orders[f"{prefix}-o-{i}"],
                "customer_id": customers[f"{prefix}-c-{i}"],
                "channel": c.channel,
                "state": c.state,
                "state_changed_at": c.purchased_at,
                "planned_at": c.purchased_at,
                "anchor_kind": "delivered",
                "anchor_at": c.anchor_at,
                "delay_seconds": None if c.delay_hours is None else int(c.delay_hours * 3600),
                "arm": c.arm,
                "sent_at": c.sent_at,
                "delivered_at": (c.sent_at + timedelta(minutes=1))
                if c.delivered and c.sent_at
                else None,
                "score": c.score,
                "closes_at": (FAR_FUTURE if c.window_open else LONG_AGO)
                if c.state in INVITED
                else None,
                "attempts": 1,
                "reminders_sent": 0,
            }
            for i, c in enumerate(cases)
            if c.state is not None
        ]
        if surveys:
            s.execute(insert(Survey), surveys)
        skips = [
            {"order_id": orders[f"{prefix}-o-{i}"], "reason": c.skip, "created_at": c.purchased_at}
            for i, c in enumerate(cases)
            if c.state is None and c.skip is not None
        ]
        if skips:
            s.execute(insert(SkippedPurchase), skips)


def random_cases(seed_: int, n: int, start: datetime, days: int = 14) -> list[Case]:
    """A mixed population touching every state, skip reason and segment."""
    rng = random.Random(seed_)
    states = [
        ("completed", 30),
        ("answered", 6),
        ("partial", 6),
        ("opted_out", 4),
        ("no_response", 25),
        ("undeliverable", 5),
        ("send_unknown", 2),
        ("failed", 3),
        ("withdrawn", 3),
        ("suppressed", 2),
        ("sent", 5),
        ("delivered", 5),
        ("scheduled", 3),
        ("waiting_anchor", 2),
        ("queued", 1),
        ("sending", 1),
        (None, 10),
    ]
    names = [s for s, _ in states]
    weights = [w for _, w in states]
    skip_reasons = ["no_consent", "invalid_contact", "frequency_cap", "excluded_test_order", None]
    out = []
    for _ in range(n):
        state = rng.choices(names, weights)[0]
        purchased = start + timedelta(minutes=rng.randrange(days * 24 * 60))
        score = rng.randrange(11) if state in ANSWERED else None
        case = Case(
            state=state,
            purchased_at=purchased,
            score=score,
            channel=rng.choice(["email", "sms"]),
            category=rng.choice(["books", "electronics", "fashion", None]),
            total=rng.choice([9.99, 25.0, 80.5, 240.0, None]),
            previous_orders=rng.choice([0, 0, 1, 4, None]),
            country=rng.choice(["DE", "RO", "FR", None]),
            arm=rng.choice(["2d", "7d", None]),
            anchor_hours=rng.choice([24.0, 48.0, 60.5, None]),
            delay_hours=rng.choice([47.0, 49.0, 72.0, 170.0]),
            delivered=rng.random() < 0.7,
            window_open=rng.random() < 0.5,
            skip=rng.choice(skip_reasons) if state is None else None,
        )
        if state in ("answered", "partial", "completed", "opted_out"):
            case.delivered = rng.random() < 0.5  # proven by the answer either way
        out.append(case)
    return out


# --------------------------------------------------------------------------- references


def ref_nps(cases: list[Case]) -> dict:
    scores = [c.score for c in cases if c.responded and c.score is not None]
    p = sum(1 for s in scores if s >= 9)
    d = sum(1 for s in scores if s <= 6)
    m = len(scores) - p - d
    n = len(scores)
    if n == 0:
        return {"nps": None, "ci": None, "p": 0, "m": 0, "d": 0, "n": 0}
    n2 = n + 3
    pp, pd = (p + 0.75) / n2, (d + 0.75) / n2
    var = (pp + pd - (pp - pd) ** 2) / n2
    half = Z * math.sqrt(var)
    ci = [max(-100, 100 * (pp - pd - half)), min(100, 100 * (pp - pd + half))]
    return {"nps": 100 * (p - d) / n, "ci": ci, "p": p, "m": m, "d": d, "n": n}


def ref_dispositions(cases: list[Case]) -> Counter:
    out: Counter = Counter()
    for c in cases:
        if c.state is None:
            continue
        if c.is_open or c.state in BEFORE_SEND:
            out["pending"] += 1
        elif c.state in ("sent", "delivered"):
            out["NC"] += 1
        else:
            out[CODE[c.state]] += 1
    return out


def ref_rates(d: Counter) -> dict:
    i, p, r, nc, o, uh, uo, ne = (d[k] for k in ("I", "P", "R", "NC", "O", "UH", "UO", "NE"))
    e = (i + p + r + nc + o) / (i + p + r + nc + o + ne)
    all_ = i + p + r + nc + o + uh + uo
    est = i + p + r + nc + o + e * (uh + uo)
    known = i + p + r + nc + o
    return {
        "RR1": i / all_,
        "RR2": (i + p) / all_,
        "RR3": i / est,
        "RR4": (i + p) / est,
        "RR5": i / known,
        "RR6": (i + p) / known,
        "COOP1": i / (i + p + r + o),
        "COOP2": (i + p) / (i + p + r + o),
        "COOP3": i / (i + p + r),
        "COOP4": (i + p) / (i + p + r),
        "REF1": r / all_,
        "REF2": r / est,
        "REF3": r / known,
        "CON1": (i + p + r + o) / all_,
        "CON2": (i + p + r + o) / est,
        "CON3": (i + p + r + o) / known,
        "e": e,
    }


def ref_funnel(cases: list[Case]) -> dict:
    surveys = [c for c in cases if c.state is not None]
    invited = [c for c in surveys if c.state in INVITED]
    delivered = [
        c
        for c in invited
        if c.state != "undeliverable"
        and (
            c.delivered or c.state in ("delivered", "answered", "partial", "completed", "opted_out")
        )
    ]
    answered = [c for c in delivered if c.state in ANSWERED]
    skipped = Counter(c.skip for c in cases if c.state is None and c.skip)
    not_planned = sum(1 for c in cases if c.state is None and not c.skip)
    eligible_reasons = dict(skipped)
    if not_planned:
        eligible_reasons["not_planned"] = not_planned
    undeliverable = sum(1 for c in invited if c.state == "undeliverable")
    return {
        "purchases": len(cases),
        "eligible": len(surveys),
        "invited": len(invited),
        "delivered": len(delivered),
        "answered": len(answered),
        "eligible_reasons": eligible_reasons,
        "invited_reasons": dict(Counter(c.state for c in surveys if c.state not in INVITED)),
        "delivered_reasons": {
            k: v
            for k, v in {
                "undeliverable": undeliverable,
                "no_delivery_receipt": len(invited) - len(delivered) - undeliverable,
            }.items()
            if v
        },
        "answered_reasons": {
            k: v
            for k, v in {
                "opted_out": sum(1 for c in delivered if c.state == "opted_out"),
                "awaiting_answer": sum(1 for c in delivered if c.is_open),
                "no_response": sum(
                    1
                    for c in delivered
                    if c.state == "no_response"
                    or (c.state in ("sent", "delivered") and not c.is_open)
                ),
            }.items()
            if v
        },
    }


def iso_week(d: datetime) -> str:
    year, week, _ = d.date().isocalendar()
    return f"{year}-W{week:02d}"


def segment_of(c: Case, by: str) -> str:
    if by == "channel":
        return c.channel
    if by == "category":
        return c.category or "unknown"
    if by == "country":
        return c.country or "unknown"
    if by == "arm":
        return c.arm or "none"
    if by == "week":
        return iso_week(c.purchased_at)
    assert by == "delay"
    if c.sent_at is None:
        return "not_sent"
    if c.anchor_at is None:
        return "unknown"
    return f"{math.floor((c.sent_at - c.anchor_at).total_seconds() / 86400)}d"


def approx(value, expected, tol=1e-9):
    if expected is None:
        return value is None
    if isinstance(expected, list | tuple):
        return len(value) == len(expected) and all(
            approx(v, e, tol) for v, e in zip(value, expected, strict=True)
        )
    return value is not None and math.isclose(value, expected, rel_tol=tol, abs_tol=tol)


def check_headline(entry: dict, cases: list[Case]) -> None:
    nps = ref_nps(cases)
    assert approx(entry["nps"], nps["nps"])
    assert approx(entry["nps_ci95"], nps["ci"])
    assert entry["counts"] == {
        "promoters": nps["p"],
        "passives": nps["m"],
        "detractors": nps["d"],
        "n": nps["n"],
    }
    surveys = [c for c in cases if c.state is not None]
    assert entry["n_surveys"] == len(surveys)
    assert entry["n_invited"] == sum(1 for c in surveys if c.state in INVITED)
    assert entry["n_answered"] == sum(1 for c in surveys if c.state in ANSWERED)
    disp = ref_dispositions(cases)
    assert entry["n_pending"] == disp["pending"]
    assert entry["dispositions"] == {
        k: disp[k] for k in ("I", "P", "R", "NC", "O", "UH", "UO", "NE", "pending")
    }
    final_invited = sum(1 for c in surveys if c.state in INVITED and not c.is_open)
    assert entry["response_rate"]["count"] == nps["n"]
    assert entry["response_rate"]["nobs"] == final_invited
    known = sum(disp[k] for k in ("I", "P", "R", "NC", "O"))
    if known and disp["I"] and disp["I"] + disp["P"] + disp["R"]:
        ref = ref_rates(disp)
        for key, value in ref.items():
            assert approx(entry["rates"][key], value), key


# --------------------------------------------------------------------------- tests


START = datetime(2026, 11, 2, tzinfo=UTC)


@pytest.fixture
def population(db: Database) -> list[Case]:
    cases = random_cases(11, 400, START)
    seed(db, cases)
    return cases


def test_overall_matches_hand_reference(db: Database, config, population):
    report = build_report(db.factory, config, now=NOW)
    check_headline(report, population)
    assert report["n_purchases"] == len(population)
    assert report["period"] == {"since": None, "until": None}
    assert report["compare"] is None and report["segments"] == []
    # Every surveyed case has exactly one disposition or is pending.
    assert sum(report["dispositions"].values()) == report["n_surveys"]

    funnel = ref_funnel(population)
    cov = report["coverage"]
    for key in ("purchases", "eligible", "invited", "delivered", "answered"):
        assert cov[key] == funnel[key], key
    steps = {s["step"]: s for s in cov["steps"]}
    assert steps["eligible"]["reasons"] == funnel["eligible_reasons"]
    assert steps["invited"]["reasons"] == funnel["invited_reasons"]
    assert steps["delivered"]["reasons"] == funnel["delivered_reasons"]
    assert steps["answered"]["reasons"] == funnel["answered_reasons"]
    for step in cov["steps"]:
        assert sum(step["reasons"].values()) == step["lost"]

    bounds = report["bounds"]
    final = [c for c in population if c.state in INVITED and not c.is_open]
    v = [100 if c.score >= 9 else 0 if c.score >= 7 else -100 for c in final if c.responded]
    n_nr = sum(1 for c in final if not c.responded)
    assert approx(bounds["worst"], (sum(v) - 100 * n_nr) / len(final))
    assert approx(bounds["best"], (sum(v) + 100 * n_nr) / len(final))
    assert report["adjusted"]["n_invited"] == len(final)
    assert report["adjusted"]["raw_nps"] == pytest.approx(report["nps"])


@pytest.mark.parametrize("by", ["channel", "category", "arm", "delay", "country", "week"])
def test_segments_match_a_grouping_done_here(db: Database, config, population, by):
    report = build_report(db.factory, config, by=by, now=NOW)
    surveyed = [c for c in population if c.state is not None]
    expected: dict[str, list[Case]] = {}
    for c in surveyed:
        expected.setdefault(segment_of(c, by), []).append(c)
    got = {s["key"]: s for s in report["segments"]}
    assert set(got) == set(expected)
    for key, cases in expected.items():
        check_headline(got[key], cases)
        final = [c for c in cases if c.state in INVITED and not c.is_open]
        adjusted = got[key]["adjusted"]
        assert adjusted["n_invited"] == len(final)
        if any(c.responded for c in final):
            assert adjusted["n_respondents"] == sum(1 for c in final if c.responded)
    assert sum(s["n_surveys"] for s in report["segments"]) == report["n_surveys"]
    if by == "delay":
        keys = [s["key"] for s in report["segments"]]
        numeric = [int(k[:-1]) for k in keys if k.endswith("d")]
        assert numeric == sorted(numeric)


def test_iso_weeks_and_delay_buckets_at_their_edges(db: Database, config):
    # ISO years differ from calendar years around New Year; whole-day delays sit on the edge.
    moments = [
        datetime(2024, 12, 29, 23, 59, tzinfo=UTC),  # Sunday, 2024-W52
        datetime(2024, 12, 30, 0, 0, tzinfo=UTC),  # Monday, 2025-W01
        datetime(2026, 1, 1, 12, 0, tzinfo=UTC),  # Thursday, 2026-W01
        datetime(2027, 1, 1, 12, 0, tzinfo=UTC),  # Friday, 2026-W53
        datetime(2027, 1, 3, 23, 0, tzinfo=UTC),  # Sunday, 2026-W53
        datetime(2027, 1, 4, 0, 0, tzinfo=UTC),  # Monday, 2027-W01
    ]
    delays = [47.99, 48.0, 23.0, 0.5, 240.0, 72.0]
    cases = [
        Case("completed", m, score=9, delay_hours=h) for m, h in zip(moments, delays, strict=True)
    ]
    seed(db, cases)
    weeks = build_report(db.factory, config, by="week", now=NOW)
    assert {s["key"]: s["n_surveys"] for s in weeks["segments"]} == dict(
        Counter(iso_week(m) for m in moments)
    )
    assert {iso_week(m) for m in moments} == {
        "2024-W52",
        "2025-W01",
        "2026-W01",
        "2026-W53",
        "2027-W01",
    }
    delay = build_report(db.factory, config, by="delay", now=NOW)
    assert [s["key"] for s in delay["segments"]] == ["0d", "1d", "2d", "3d", "10d"]
    assert {s["key"]: s["n_surveys"] for s in delay["segments"]} == {
        "0d": 2,
        "1d": 1,
        "2d": 1,
        "3d": 1,
        "10d": 1,
    }


def test_period_since_inclusive_until_exclusive(db: Database, config):
    days = [datetime(2026, 11, d, h, tzinfo=UTC) for d in (9, 10, 11) for h in (0, 23)]
    cases = [Case("completed", m, score=10 if m.day == 10 else 0) for m in days]
    seed(db, cases)
    report = build_report(db.factory, config, since="2026-11-10", until="2026-11-11", now=NOW)
    assert report["n_purchases"] == 2 and report["counts"]["promoters"] == 2
    assert report["nps"] == 100.0
    assert report["period"] == {"since": "2026-11-10", "until": "2026-11-11"}
    # The previous period of the same length is compared by default.
    compare = report["compare"]
    assert compare["period"] == {"since": "2026-11-09", "until": "2026-11-10"}
    assert compare["nps"] == -100.0 and compare["counts"]["detractors"] == 2
    # Hand z-test: adjusted counts 2.75/1.5/0.75 vs 0.75/1.5/2.75 over 5 each.
    pa, da = 0.75 / 5, 2.75 / 5
    pb, db_ = 2.75 / 5, 0.75 / 5
    var = (pa + da - (pa - da) ** 2) / 5 + (pb + db_ - (pb - db_) ** 2) / 5
    diff = compare["difference"]
    assert diff["difference"] == pytest.approx(200.0)
    assert diff["z"] == pytest.approx(100 * ((pb - db_) - (pa - da)) / (100 * math.sqrt(var)))
    assert diff["p_value"] == pytest.approx(math.erfc(abs(diff["z"]) / math.sqrt(2)))

    explicit = build_report(
        db.factory,
        config,
        since="2026-11-10",
        until="2026-11-11",
        compare_since=date(2026, 11, 11),
        compare_until=date(2026, 11, 12),
        now=NOW,
    )
    assert explicit["compare"]["counts"]["detractors"] == 2
    none = build_report(
        db.factory, config, since="2026-11-10", until="2026-11-11", compare=False, now=NOW
    )
    assert none["compare"] is None
    open_ended = build_report(db.factory, config, since="2026-11-10", now=NOW)
    assert open_ended["compare"] is None and open_ended["n_purchases"] == 4


def test_timing_by_arm_and_delay(db: Database, config):
    base = datetime(2026, 11, 3, 8, tzinfo=UTC)
    cases = (
        [Case("completed", base, score=10, arm="2d", delay_hours=49) for _ in range(30)]
        + [Case("completed", base, score=3, arm="2d", delay_hours=49) for _ in range(10)]
        + [Case("no_response", base, arm="2d", delay_hours=49) for _ in range(40)]
        + [Case("completed", base, score=10, arm="7d", delay_hours=170) for _ in range(12)]
        + [Case("answered", base, score=5, arm="7d", delay_hours=170) for _ in range(18)]
        + [Case("no_response", base, arm="7d", delay_hours=170) for _ in range(50)]
        + [Case("sent", base, arm="7d", delay_hours=170, window_open=True) for _ in range(7)]
    )
    seed(db, cases)
    report = build_report(db.factory, config, now=NOW)
    timing = report["timing"]
    arms = {g["label"]: g for g in timing["by_arm"]}
    assert list(arms) == ["2d", "7d"] and timing["reference_arm"] == "2d"
    assert arms["2d"]["nps"]["nps"] == pytest.approx(100 * (30 - 10) / 40)
    assert arms["7d"]["nps"]["nps"] == pytest.approx(100 * (12 - 18) / 30)
    assert arms["2d"]["response_rate"]["rate"] == pytest.approx(40 / 80)
    assert arms["7d"]["response_rate"]["nobs"] == 80  # the 7 open ones are not final
    # Wilson interval by hand.
    n, phat = 80, 30 / 80
    centre = (phat + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(phat * (1 - phat) / n + Z**2 / (4 * n**2))
    assert arms["7d"]["response_rate"]["ci95"] == pytest.approx([centre - half, centre + half])
    assert arms["2d"]["vs_reference"] is None
    vs = arms["7d"]["vs_reference"]
    a = (30.75 / 43, 10.75 / 43, 43)
    b = (12.75 / 33, 18.75 / 33, 33)
    se = 100 * math.sqrt(sum((p + d - (p - d) ** 2) / m for p, d, m in (a, b)))
    assert vs["se"] == pytest.approx(se)
    assert vs["z"] == pytest.approx(100 * ((b[0] - b[1]) - (a[0] - a[1])) / se)
    delays = {g["label"]: g for g in timing["by_delay"]}
    assert list(delays) == ["2d", "7d"]  # 49 h -> 2 days, 170 h -> 7 days
    assert delays["7d"]["nps"]["n"] == 30


def test_adjusted_matches_an_independent_statsmodels_fit(db: Database, config):
    rng = np.random.default_rng(5)
    cases = []
    for i in range(600):
        repeat = rng.random() < 0.4
        channel = "sms" if rng.random() < 0.4 else "email"
        p = 1 / (1 + math.exp(-(-1.0 + 1.5 * repeat - 0.5 * (channel == "sms"))))
        answered = rng.random() < p
        score = int(np.clip(round(rng.normal(8.5 if repeat else 5.5, 2)), 0, 10))
        cases.append(
            Case(
                "completed" if answered else "no_response",
                START + timedelta(hours=i),
                score=score if answered else None,
                channel=channel,
                category=["books", "garden", "toys"][i % 3],
                total=float(rng.choice([12.5, 40.0, 99.0, 310.0])),
                previous_orders=int(repeat) * 3,
                country=["DE", "AT"][i % 2],
                arm=["2d", "5d"][(i // 2) % 2],
                delay_hours=float(rng.choice([48.0, 60.0, 120.0])),
            )
        )
    seed(db, cases)
    report = build_report(db.factory, config, now=NOW)
    adj = report["adjusted"]
    assert adj["fit"] == "logit" and adj["n_clipped"] == 0

    # Reference: a plain statsmodels Logit on dummies built here, Hajek mean, Kish n_eff.
    r = np.array([c.responded for c in cases], dtype=float)
    cols = [np.ones(len(cases))]
    for name, ref_level in (
        ("channel", "email"),
        ("category", "books"),
        ("country", "DE"),
        ("arm", "2d"),
    ):
        values = np.array([getattr(c, name) for c in cases])
        for level in sorted(set(values) - {ref_level}):
            cols.append((values == level).astype(float))
    # The order value in steps of 0.1 on the log scale, whole days from anchor to send.
    cols.append(np.round(np.log1p([c.total for c in cases]) * 10) / 10)
    cols.append(np.array([c.previous_orders > 0 for c in cases], dtype=float))
    cols.append(np.floor(np.array([c.delay_hours / 24 for c in cases])))
    x = np.column_stack(cols)
    fit = sm.Logit(r, x).fit(disp=0)
    p = fit.predict(x)
    resp = r == 1
    w = 1 / p[resp]
    v = np.array(
        [100.0 if c.score >= 9 else 0.0 if c.score >= 7 else -100.0 for c in cases if c.responded]
    )
    assert adj["nps"] == pytest.approx(float(np.sum(w * v) / np.sum(w)), rel=1e-6)
    assert adj["n_eff"] == pytest.approx(float(w.sum() ** 2 / (w**2).sum()), rel=1e-6)
    lo, hi = adj["ci95"]
    assert lo < adj["nps"] < hi
    # SMD of the repeat-buyer indicator, responders vs non-responders, by hand.
    rep = np.array([c.previous_orders > 0 for c in cases], dtype=np.float64)
    m1, m0 = rep[resp].mean(), rep[~resp].mean()
    smd = (m1 - m0) / math.sqrt((m1 * (1 - m1) + m0 * (1 - m0)) / 2)
    by_name = {b["covariate"]: b for b in adj["smd"]}
    assert by_name["repeat_buyer"]["smd"] == pytest.approx(smd)
    assert by_name["repeat_buyer"]["flagged"] is bool(abs(smd) > 0.1)


def test_biased_population_adjusted_differs_from_raw(db: Database, config):
    """Repeat buyers answer far more often and score higher: the raw NPS overstates; the
    propensity-weighted NPS moves toward the NPS of everyone invited."""
    rng = np.random.default_rng(42)
    cases, true_values = [], []
    for i in range(2000):
        repeat = rng.random() < 0.3
        score = int(
            rng.choice([9, 10, 8])
            if repeat
            else rng.choice([2, 5, 6, 7, 9], p=[0.25, 0.25, 0.2, 0.15, 0.15])
        )
        answered = rng.random() < (0.6 if repeat else 0.1)
        true_values.append(100 if score >= 9 else 0 if score >= 7 else -100)
        cases.append(
            Case(
                "completed" if answered else "no_response",
                START + timedelta(minutes=7 * i),
                score=score if answered else None,
                previous_orders=2 if repeat else 0,
                channel=["email", "sms"][i % 2],
            )
        )
    seed(db, cases)
    report = build_report(db.factory, config, now=NOW)
    truth = float(np.mean(true_values))
    raw, adj = report["nps"], report["adjusted"]
    assert raw > truth + 20  # the bias is real
    assert adj["differs_from_raw"] is True
    assert abs(adj["nps"] - truth) < abs(raw - truth) / 3
    assert adj["ci95"][0] <= truth <= adj["ci95"][1]
    assert report["adjusted"]["note"].startswith("The raw NPS")
    flagged = {b["covariate"] for b in adj["smd"] if b["flagged"]}
    assert "repeat_buyer" in flagged
    assert report["bounds"]["worst"] <= truth <= report["bounds"]["best"]


def test_empty_database_gives_an_empty_report(db: Database, config):
    report = build_report(db.factory, config, by="channel", now=NOW)
    assert report["n_purchases"] == 0 and report["nps"] is None and report["nps_ci95"] is None
    assert report["segments"] == [] and report["adjusted"]["nps"] is None
    assert all(v is None for k, v in report["rates"].items())
    assert report["timing"]["by_arm"] == []


def test_bad_parameters_are_refused(sqlite_db: Database, config):
    with pytest.raises(ReportError, match="since: '2026-13-01' is not a date"):
        build_report(sqlite_db.factory, config, since="2026-13-01")
    with pytest.raises(ReportError, match="by: 'colour' is not a segment"):
        build_report(sqlite_db.factory, config, by="colour")
    with pytest.raises(ReportError, match="must be before"):
        build_report(sqlite_db.factory, config, since="2026-11-10", until="2026-11-10")


def test_configured_bands_are_used(db: Database, config):
    cases = [Case("completed", START, score=s) for s in (5, 6, 8, 9, 10)]
    seed(db, cases)
    wide = config.model_copy(
        update={
            "survey": config.survey.model_copy(
                update={
                    "bands": config.survey.bands.model_copy(
                        update={"detractor": (0, 5), "passive": (6, 8), "promoter": (9, 10)}
                    )
                }
            )
        }
    )
    report = build_report(db.factory, wide, now=NOW)
    assert report["counts"] == {"promoters": 2, "passives": 2, "detractors": 1, "n": 5}
    assert report["bands"] == {"detractor": [0, 5], "passive": [6, 8], "promoter": [9, 10]}


def test_fetch_holds_every_final_invitation_once_with_coarse_covariates(db: Database, config):
    """The covariate table holds each final invitation once, with the order value in steps of
    0.1 on the log scale and whole days to send capped at 60, as built one invitee at a time by
    the reference (odd strings, missing and negative totals, long delays included), and a
    responder's score as the lowest of its band; invitees sharing them share a row."""
    from reports.build import bands_of
    from reports.covariates_query import fetch_patterns
    from tests.reports.stats.per_row import invitees as per_invitee

    cases = random_cases(3, 300, START)
    cases[0].category = "home\x1fgarden & déco"
    cases[0].state, cases[0].score = "completed", 9
    cases[1].country = ""
    cases[1].state = "no_response"
    cases += [Case("no_response", START + timedelta(hours=3), total=12.5) for _ in range(6)]
    cases += [
        Case("no_response", START, total=total, delay_hours=hours)
        for total, hours in ((None, 24 * 75.5), (-3.0, 24 * 60.0), (0.0, 24 * 59.99), (1e5, 1.0))
    ]
    seed(db, cases)
    bands = bands_of(config)
    with db.session() as s:
        patterns = fetch_patterns(s, Period(), NOW, bands, ("arm", "delay", "week"), "week")
    table = patterns.covariates

    def invitees() -> Counter:
        out: Counter = Counter()
        for row in range(table.rows):
            p = table.pattern[row]
            days = table.days_anchor_to_send[row]
            key = (
                str(table.category[p]),
                str(table.country[p]),
                str(table.segment[p]),
                bool(table.responded[p]),
                None if np.isnan(table.score[p]) else int(table.score[p]),
                float(table.log_order_total[row]),
                None if np.isnan(days) else float(days),
            )
            out[key] += int(table.count[row])
        return out

    def band_floor(score: int) -> int:  # responders are grouped by band
        bounds = (bands.detractor, bands.passive, bands.promoter)
        return next(low for low, high in bounds if low <= score <= high)

    final = per_invitee.final_invitations(cases)
    expected = Counter(
        (
            c.category or "unknown",
            "unknown" if c.country is None else c.country,
            iso_week(c.purchased_at),
            c.responded,
            band_floor(c.score) if c.responded else None,
            per_invitee.log_order_total(c.total),
            None if math.isnan(days := per_invitee.days_anchor_to_send(c)) else days,
        )
        for c in final
    )
    assert invitees() == expected
    assert table.n == len(final) and table.rows < len(final)
    assert table.days_anchor_to_send[~np.isnan(table.days_anchor_to_send)].max() == 60
    assert "home\x1fgarden & déco" in table.category.tolist()


def test_report_planner_settings_last_one_transaction(db: Database):
    from sqlalchemy import text

    from reports.build import tune_session

    with db.session() as s:
        tune_session(s)  # a no-op on SQLite
        if db.engine.dialect.name == "postgresql":
            assert s.execute(text("SHOW enable_sort")).scalar() == "off"
            assert s.execute(text("SHOW jit")).scalar() == "off"
            s.rollback()
            assert s.execute(text("SHOW enable_sort")).scalar() == "on"
