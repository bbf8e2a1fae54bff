"""Planning on real databases: frequency cap, anchor time-out, re-planning after a config edit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from config import load_config
from dispatch.scheduler import Scheduler
from ingest.service import ingest_event
from models import Order, SkippedPurchase, Survey
from tests.conftest import Database
from tests.factories import order_event, purchase
from tests.seeding import seed_due_surveys

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def surveys(db: Database) -> dict[str, Survey]:
    with db.session() as s:
        return {o: sv for sv, o in s.execute(select(Survey, Order.external_id).join(Order))}


def test_frequency_cap_counts_across_channels(db: Database, config):
    ingest_event(db.factory, purchase("F-1", consent={"email": True, "sms": True}), config, NOW)
    later = purchase("F-2", at="2026-12-01T10:00:00Z", consent={"email": False, "sms": True})
    ingest_event(db.factory, later, config, datetime(2026, 12, 1, 10, tzinfo=UTC))
    outside = purchase("F-3", at="2027-03-15T10:00:00Z", consent={"sms": True})
    ingest_event(db.factory, outside, config, datetime(2027, 3, 15, 10, tzinfo=UTC))
    found = surveys(db)
    assert found["F-1"].channel == "email"
    assert "F-2" not in found
    assert found["F-3"].channel == "sms"  # 115 days later: outside the 90-day cap
    with db.session() as s:
        assert s.scalars(select(SkippedPurchase.reason)).all() == ["frequency_cap"]


def test_anchor_timeout_anchors_on_purchase_plus_timeout(db: Database, config):
    ingest_event(db.factory, purchase("T-1", at="2026-11-15T10:00:00Z"), config, NOW)
    survey = surveys(db)["T-1"]
    assert survey.state == "waiting_anchor"
    deadline = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # purchase + anchor_timeout (10d)
    assert survey.due_at == deadline
    Scheduler(db.factory, lambda _i: None).tick(config, deadline - timedelta(minutes=1))
    assert surveys(db)["T-1"].state == "waiting_anchor"
    Scheduler(db.factory, lambda _i: None).tick(config, deadline + timedelta(minutes=1))
    survey = surveys(db)["T-1"]
    assert (survey.state, survey.anchor_kind, survey.anchor_at) == (
        "scheduled",
        "timeout",
        deadline,
    )
    assert survey.due_at >= deadline + config.schedule.delay


def test_delivery_anchor_and_rule_delay(db: Database, tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(
        '[schedule]\nanchor = "delivered"\ndelay = "3d"\njitter = "0s"\n'
        'quiet_hours = { start = "00:00", end = "00:00" }\n'
        'send_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]\n'
        '[[schedule.rules]]\nmatch = { category = "books" }\ndelay = "1d"\n'
        '[[schedule.rules]]\nmatch = { category = ["books", "electronics"] }\ndelay = "7d"\n'
    )
    cfg = load_config(path)
    ingest_event(db.factory, purchase("R-1", category="electronics"), cfg, NOW)
    ingest_event(db.factory, purchase("R-2", customer_id="c-2", category="books"), cfg, NOW)
    for order in ("R-1", "R-2"):
        ingest_event(
            db.factory, order_event("delivered", order, at="2026-11-21T10:00:00Z"), cfg, NOW
        )
    found = surveys(db)
    delivered = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    assert (found["R-1"].rule_index, found["R-1"].due_at) == (1, delivered + timedelta(days=7))
    assert (found["R-2"].rule_index, found["R-2"].due_at) == (0, delivered + timedelta(days=1))
    assert found["R-1"].config_version == cfg.schedule_version


def test_config_edit_replans_unsent_surveys_only(db: Database, tmp_path):
    path = tmp_path / "nps.toml"
    base = (
        '[schedule]\nanchor = "purchase"\njitter = "0s"\n'
        'quiet_hours = { start = "00:00", end = "00:00" }\n'
        'send_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]\n'
    )
    path.write_text(base + 'delay = "3d"\n')
    old = load_config(path)
    bought = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    for i in range(3):
        ingest_event(db.factory, purchase(f"C-{i}", customer_id=f"c-{i}", at=bought), old, NOW)
    # C-0 becomes due and is queued under the old config; C-1 and C-2 are still pending.
    with db.session() as s, s.begin():
        first = s.scalar(select(Survey).join(Order).where(Order.external_id == "C-0"))
        first.due_at = NOW
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(old, NOW)
    assert len(enqueued) == 1
    path.write_text(base + 'delay = "10d"\n')
    new = load_config(path)
    assert new.schedule_version != old.schedule_version
    report = Scheduler(db.factory, enqueued.append).tick(new, NOW)
    assert report.replanned == 2
    found = surveys(db)
    assert found["C-0"].state == "queued"
    assert found["C-0"].config_version == old.schedule_version
    for order in ("C-1", "C-2"):
        assert found[order].config_version == new.schedule_version
        assert found[order].due_at == bought + timedelta(days=10)
        assert found[order].delay_seconds == 10 * 86400


def test_an_edit_outside_the_schedule_replans_nothing(db: Database, tmp_path):
    """Rate limits, alerts, shop mappings and the survey's wording do not move a due time:
    editing them must not re-plan every pending survey (a million of them, possibly)."""
    path = tmp_path / "nps.toml"
    schedule = '[schedule]\nanchor = "purchase"\ndelay = "3d"\njitter = "0s"\n'
    path.write_text(schedule)
    old = load_config(path)
    for i in range(3):
        ingest_event(db.factory, purchase(f"E-{i}", customer_id=f"e-{i}"), old, NOW)
    before = {order: (s.due_at, s.state) for order, s in surveys(db).items()}
    path.write_text(
        schedule
        + '[rate_limits]\nemail = 3\nsms = 2\n[survey]\nshop_name = "Renamed"\n'
        + '[alerts]\ndetractor_webhook = "https://hooks.example.test/nps"\n'
    )
    new = load_config(path)
    assert new.version != old.version
    assert new.schedule_version == old.schedule_version
    report = Scheduler(db.factory, lambda survey_id: None).tick(new, NOW)
    assert report.replanned == 0
    assert {order: (s.due_at, s.state) for order, s in surveys(db).items()} == before
    assert {s.config_version for s in surveys(db).values()} == {old.schedule_version}


def test_surveys_stamped_with_the_whole_config_hash_of_the_same_config_stay_as_planned(
    db: Database, config
):
    """Earlier versions recorded the whole config's hash: after an upgrade with the same config
    nothing is re-planned, while a survey planned under another config still is."""
    *current, older = seed_due_surveys(
        db, 5, NOW + timedelta(days=2), config_version=config.version
    )
    with db.session() as s, s.begin():
        s.execute(update(Survey).where(Survey.id == older).values(config_version="0123456789ab"))
    assert "0123456789ab" not in (config.version, config.schedule_version)
    report = Scheduler(db.factory, lambda survey_id: None).tick(config, NOW)
    assert report.replanned == 1
    with db.session() as s:
        stamped = dict(s.execute(select(Survey.id, Survey.config_version)).all())
    assert {stamped[i] for i in current} == {config.version}
    assert stamped[older] == config.schedule_version
