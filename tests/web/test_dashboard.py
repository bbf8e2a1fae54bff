"""GET /dashboard and its downloads: operators only, the report's own figures for the filtered
view, comments by band and search, plain empty and error states, and a cache that serves a
second load without recomputing until an answer arrives."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from itertools import chain, cycle
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from channels.links import AnswerLinks
from config import load_config
from models import Order, Survey
from reports.build import build_report
from reports.filtered import build_view_report
from reports.filters import FilteredPeriod
from tests.conftest import TEST_SECRET_KEY, Database
from tests.reports.test_report_db import Case, random_cases, seed
from web import dashboard_view as words
from web.app import create_app
from web.dashboard_data import cache_for

AUTH = ("ops", "test-dashboard")
START = datetime(2026, 9, 28, tzinfo=UTC)
SEARCHED = "The parcel arrived CRUSHED and two days late"
FORMULA = '=HYPERLINK("http://evil.example","click")'
COMMENTS = [  # SEARCHED once, then the others in turn
    SEARCHED,
    FORMULA,
    "-1 for the packaging",
    "@support never wrote back",
    "Fast delivery, fair price",
    "Good product, the manual is confusing",
    "Would buy again",
    "Support answered within an hour",
]
UNDEFINED_INTERVAL = re.compile("[-\u2013] to [-\u2013](?!\\d)")  # "- to -", never shown
WHOLE = {"since": "2026-09-01", "until": "2026-11-21"}


def seed_dashboard(db: Database, n: int = 320) -> list[Case]:
    """A mixed population over eight weeks before 2026-11-20, each answer with a comment
    (one names the parcel CRUSHED, one is a spreadsheet formula)."""
    cases = random_cases(7, n, START, days=52)
    seed(db, cases, prefix="dash")
    with db.session() as s, s.begin():
        answered = s.execute(
            select(Survey.id, Survey.state_changed_at)
            .where(Survey.state.in_(["answered", "partial", "completed"]))
            .order_by(Survey.id)
        ).all()
        for (survey_id, at), text in zip(
            answered, chain([SEARCHED], cycle(COMMENTS[1:])), strict=False
        ):
            s.execute(
                update(Survey)
                .where(Survey.id == survey_id)
                .values(comment=text, answered_at=at + timedelta(days=4))
            )
    return cases


@pytest.fixture
def client(sqlite_db: Database, runtime_for) -> TestClient:
    return TestClient(create_app(runtime_for(sqlite_db)))


@pytest.fixture
def seeded(sqlite_db: Database) -> list[Case]:
    return seed_dashboard(sqlite_db)


def card(page: str, card_id: str) -> str:
    match = re.search(rf'id="{card_id}">(.*?)</div></div>', page, re.S)
    assert match, f"no card {card_id}"
    return re.sub(r"<[^>]+>", " ", match.group(1))


def test_dashboard_needs_the_operator_password(client):
    assert client.get("/dashboard").status_code == 401
    assert client.get("/dashboard", auth=("ops", "wrong")).status_code == 401
    assert client.get("/v1/reports/answers", params={"format": "csv"}).status_code == 401
    css = client.get("/dashboard/static/dashboard.css")  # no data in it: no password
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert client.get("/dashboard/static/../app.py").status_code == 404


def test_default_view_is_the_last_90_days_with_charts(client, seeded, frozen_clock):
    page = client.get("/dashboard", auth=AUTH)
    assert page.status_code == 200, page.text
    html = page.text
    assert 'name="since" value="2026-08-23"' in html  # 90 days up to 2026-11-20 included
    assert 'name="until" value="2026-11-21"' in html
    assert html.count("<svg") >= 7
    for axis in ("Week of purchase", "NPS", "Score", "Answers", "Response rate (95% interval)"):
        assert f">{axis}</text>" in html
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', html)  # nothing from elsewhere
    assert "<script" not in html  # no script, and every asset is ours
    assert 'href="/dashboard/static/dashboard.css"' in html
    assert not UNDEFINED_INTERVAL.search(html)
    assert '<details class="method"' in html and '<details class="method" open' not in html
    assert "95% interval" in card(html, "nps-raw") and "95% interval" in card(html, "nps-adjusted")


def test_headline_and_filters_are_the_reports(client, seeded, sqlite_db, config, frozen_clock):
    everyone = client.get("/dashboard", params=WHOLE, auth=AUTH).text
    sms = client.get("/dashboard", params={**WHOLE, "channel": "sms"}, auth=AUTH).text
    report = client.get("/v1/reports/nps", params=WHOLE, auth=AUTH).json()
    sms_report = client.get("/v1/reports/nps", params={**WHOLE, "channel": "sms"}, auth=AUTH).json()
    assert sms_report["filters"] == {"channel": "sms", "category": None}
    assert f"{report['nps']:.1f}" in card(everyone, "nps-raw")
    assert f"{sms_report['nps']:.1f}" in card(sms, "nps-raw")
    assert card(everyone, "nps-raw") != card(sms, "nps-raw")
    answered_sms = sum(1 for c in seeded if c.channel == "sms" and c.responded)
    assert sms_report["counts"]["n"] == answered_sms
    assert f"{answered_sms} answers" in card(sms, "nps-raw")


@pytest.mark.parametrize(
    ("key", "value"), [("channel", "sms"), ("category", "books"), ("category", "unknown")]
)
def test_a_filtered_view_equals_the_reports_segment(db: Database, config, now, key, value):
    seed_dashboard(db, 260)
    view = FilteredPeriod(date(2026, 9, 1), date(2026, 11, 21), **{key: value})
    filtered = build_view_report(db.factory, config, view, "arm", now=now)
    [segment] = [
        s
        for s in build_report(db.factory, config, view.since, view.until, key, now=now)["segments"]
        if s["key"] == value
    ]
    for name in ("n_surveys", "n_invited", "n_pending", "counts", "nps", "nps_ci95", "rates"):
        assert filtered[name] == segment[name], name
    assert filtered["adjusted"]["nps"] == pytest.approx(segment["adjusted"]["nps"], abs=1e-6)
    assert [s["key"] for s in filtered["segments"]] == ["2d", "7d", "none"]


def test_a_filtered_view_compares_under_its_filters(db: Database, config, now):
    cases = seed_dashboard(db, 260)
    view = FilteredPeriod(date(2026, 10, 15), date(2026, 11, 15), channel="sms")
    report = build_view_report(db.factory, config, view, None, now=now)
    previous = report["compare"]
    assert previous["period"] == {"since": "2026-09-14", "until": "2026-10-15"}
    assert previous["n_answered"] == sum(
        1
        for c in cases
        if c.channel == "sms"
        and c.responded
        and datetime(2026, 9, 14, tzinfo=UTC) <= c.purchased_at < datetime(2026, 10, 15, tzinfo=UTC)
    )
    assert report["filters"] == {"channel": "sms", "category": None}


def test_empty_period_says_no_answers_yet(client, seeded):
    page = client.get(
        "/dashboard", params={"since": "2020-01-01", "until": "2020-02-01"}, auth=AUTH
    )
    assert page.status_code == 200
    assert 'id="empty-state"' in page.text and "No answers yet" in page.text
    assert "95% interval" not in page.text and not UNDEFINED_INTERVAL.search(page.text)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"since": "2026-11-10", "until": "2026-11-01"}, "period"),
        ({"channel": "fax"}, "channel"),
        ({"band": "neutral"}, "band"),
        ({"page": "0"}, "page"),
        ({"page": "two"}, "page"),
        ({"by": "colour"}, "by"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(client, params, field):
    page = client.get("/dashboard", params=params, auth=AUTH)
    assert page.status_code == 422
    assert re.search(rf'id="error">{field}: ', page.text), page.text[-600:]


def test_answers_download_rejects_bad_parameters(client):
    for params, field in (
        ({"band": "x"}, "band"),
        ({"page": "0"}, "page"),
        ({"format": "xml"}, "format"),
    ):
        response = client.get("/v1/reports/answers", params=params, auth=AUTH)
        assert response.status_code == 422 and response.json()["error"]["param"] == field


def test_comments_by_band_search_and_pages(client, seeded, frozen_clock):
    html = client.get("/dashboard", params=WHOLE, auth=AUTH).text
    assert html.count('<li class="comment">') == 20 and 'rel="next"' in html
    found = client.get("/dashboard", params={**WHOLE, "q": "crushed"}, auth=AUTH).text
    assert found.count('<li class="comment">') == 1 and SEARCHED in found
    literal = client.get("/dashboard", params={**WHOLE, "q": "100%"}, auth=AUTH).text
    assert literal.count('<li class="comment">') == 0 and 'id="no-comments"' in literal
    detractors = client.get("/dashboard", params={**WHOLE, "band": "detractor"}, auth=AUTH).text
    scores = [int(s) for s in re.findall(r'<span class="score \w+"[^>]*>(\d+)<', detractors)]
    assert scores and all(s <= 6 for s in scores)
    second = client.get("/dashboard", params={**WHOLE, "page": "2"}, auth=AUTH).text
    assert 'rel="prev"' in second and second.count('<li class="comment">') >= 1


def test_csv_of_the_report_and_of_the_answers(client, seeded, frozen_clock):
    html = client.get("/dashboard", params={**WHOLE, "channel": "email"}, auth=AUTH).text
    report_link = re.search(r'id="csv-report" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    answers_link = (
        re.search(r'id="csv-answers" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    )
    report = client.get(report_link, auth=AUTH)
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(report.text)))
    assert rows[0]["segment"] == "all" and [r["segment"] for r in rows[1:]] == ["email"]
    answers = client.get(answers_link, auth=AUTH)
    assert answers.headers["content-disposition"].startswith("attachment")
    table = list(csv.DictReader(io.StringIO(answers.text)))
    assert table and {r["channel"] for r in table} == {"email"}
    assert set(table[0]) == {"answered_at", "score", "band", "channel", "category", "comment"}
    texts = {r["comment"] for r in table}
    assert "'" + FORMULA in texts and FORMULA not in texts
    assert "'-1 for the packaging" in texts and "'@support never wrote back" in texts
    found = client.get(
        "/v1/reports/answers", params={**WHOLE, "q": "CRUSHED", "format": "csv"}, auth=AUTH
    )
    assert [r["comment"] for r in csv.DictReader(io.StringIO(found.text))] == [SEARCHED]
    page = client.get("/v1/reports/answers", params={**WHOLE, "band": "promoter"}, auth=AUTH).json()
    assert page["answers"] and all(a["band"] == "promoter" for a in page["answers"])


def test_a_second_load_is_cached_until_an_answer_arrives(
    client, seeded, sqlite_db, runtime_for, frozen_clock
):
    cache = cache_for(client.app.state.runtime)
    cache.clear()
    first = client.get("/dashboard", params=WHOLE, auth=AUTH).text
    misses = cache.stats().misses
    assert misses == 3  # the report, the weekly report, the histogram and rates
    again = client.get("/dashboard", params=WHOLE, auth=AUTH).text
    assert cache.stats().misses == misses and card(again, "nps-raw") == card(first, "nps-raw")
    with sqlite_db.session() as s:
        open_id = s.scalar(
            select(Survey.id)
            .join(Order, Order.id == Survey.order_id)
            .where(Survey.state == "delivered", Survey.closes_at > frozen_clock_now())
            .order_by(Survey.id)
            .limit(1)
        )
    assert open_id is not None
    token_url = AnswerLinks(TEST_SECRET_KEY, "https://nps.example.test").url_for(
        open_id, frozen_clock_now() + timedelta(days=5)
    )
    posted = client.post(
        token_url.split("nps.example.test", 1)[1], data={"score": "10"}, follow_redirects=False
    )
    assert posted.status_code == 303
    # The next load answers at once with the figures it has, and says newer ones are coming.
    stale = client.get("/dashboard", params=WHOLE, auth=AUTH).text
    assert 'id="updating"' in stale and card(stale, "nps-raw") == card(first, "nps-raw")
    cache.wait_idle()
    assert cache.stats().misses == misses + 3  # recomputed once, behind the page
    after = client.get("/dashboard", params=WHOLE, auth=AUTH).text
    assert 'id="updating"' not in after
    before_n = int(re.search(r"([\d,]+) answers", card(first, "nps-raw")).group(1))
    after_n = int(re.search(r"([\d,]+) answers", card(after, "nps-raw")).group(1))
    assert after_n == before_n + 1
    # The report API never answers with figures of older data.
    api = client.get("/v1/reports/nps", params=WHOLE, auth=AUTH).json()
    assert api["counts"]["n"] == after_n


def frozen_clock_now() -> datetime:
    return datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def test_benchmark_from_the_toml_and_its_bounds(
    sqlite_db, runtime_for, tmp_path: Path, frozen_clock
):
    seed_dashboard(sqlite_db, 120)
    toml = tmp_path / "nps.toml"
    toml.write_text("[survey]\nbenchmark = 30\n")
    client = TestClient(create_app(runtime_for(sqlite_db, NPS_CONFIG=str(toml))))
    html = client.get("/dashboard", params=WHOLE, auth=AUTH).text
    assert "your benchmark of 30" in card(html, "interpretation")
    toml.write_text("[survey]\nbenchmark = 130\n")
    with pytest.raises(Exception, match=r"survey\.benchmark"):
        load_config(toml)


def test_data_is_escaped_in_the_page(client, seeded, sqlite_db, frozen_clock):
    with sqlite_db.session() as s, s.begin():
        s.execute(update(Order).where(Order.category == "books").values(category="<b>x</b>"))
    html = client.get("/dashboard", params={**WHOLE, "by": "category"}, auth=AUTH).text
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_the_sentence_ranks_covariates_by_absolute_smd():
    smd = [
        {"covariate": "channel=sms", "smd": 0.21, "flagged": True},
        {"covariate": "channel=email", "smd": -0.21, "flagged": True},
        {"covariate": "log_order_total", "smd": 0.05, "flagged": False},
        {"covariate": "country=DE", "smd": -0.6, "flagged": True},
        {"covariate": "repeat_buyer", "smd": 1.35, "flagged": True},
    ]
    assert [name for name, _ in words.ranked_differences(smd)] == [
        "repeat_buyer",
        "country",
        "channel",
    ]
    sentence = words.differs_sentence(smd)
    assert sentence is not None
    assert sentence.index("repeat buyers (1.35)") < sentence.index("country (0.60)")
    assert words.differs_sentence(smd[2:3]) is None


@pytest.mark.parametrize(
    ("nps", "label"),
    [
        (-5, "below 0"),
        (0, "0 to 30"),
        (29.9, "0 to 30"),
        (30, "30 to 50"),
        (55, "50 to 70"),
        (71, "above 70"),
    ],
)
def test_interpretation_bands(nps, label):
    found = words.interpret(nps)
    assert found is not None and found.label.startswith(label)
    assert words.interpret(None) is None
