"""The answer page over HTTP: GET records nothing, POST records, tokens, locales, unsubscribe,
body and rate limits."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from channels.links import AnswerLinks
from config import load_config
from dispatch.responses import SmsReply
from models import Answer, ConsentRecord, InboundEvent, Survey, SurveyTransition, utcnow
from tests.conftest import Database
from tests.dispatch.test_responses import answers_of, seed_survey, survey_of
from tests.faults import failing_once
from web.answer_pages import followup_question, language_of, sms_reply_text
from web.app import create_app
from web.ratelimit import RateLimit, RateRule, TokenBuckets, client_key

BASE = "https://nps.example.test"
LINKS = AnswerLinks("test-secret-key", BASE)


@pytest.fixture
def client(db: Database, runtime_for):
    return TestClient(create_app(runtime_for(db)))


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def link(survey_id: int, score: int | None = None, *, expires_in=timedelta(days=10)) -> str:
    return path_of(LINKS.url_for(survey_id, utcnow() + expires_in, score=score))


def snapshot(db: Database) -> tuple:
    """Everything an answer could change."""
    with db.session() as s:
        surveys = s.execute(
            select(Survey.id, Survey.state, Survey.score, Survey.comment).order_by(Survey.id)
        ).all()
        return (
            tuple(surveys),
            s.scalar(select(func.count()).select_from(Answer)),
            s.scalar(select(func.count()).select_from(SurveyTransition)),
            s.scalar(select(func.count()).select_from(ConsentRecord)),
            s.scalar(select(func.count()).select_from(InboundEvent)),
        )


# --- GET records nothing ------------------------------------------------------------------------


def test_get_with_a_score_preselects_and_records_nothing(client, db: Database):
    sid = seed_survey(db, channel="email", state="delivered")
    before = snapshot(db)
    response = client.get(link(sid, 9))
    assert response.status_code == 200
    html = response.text
    assert re.search(r'<input type="radio" name="score" value="9" id="score-9" checked', html)
    assert 'data-autopost="1"' in html
    assert snapshot(db) == before


def test_a_mail_scanner_fetching_every_link_records_nothing(client, db: Database):
    sid = seed_survey(db, channel="email", state="delivered")
    before = snapshot(db)
    expires = utcnow() + timedelta(days=10)
    for score in range(11):
        assert client.get(link(sid, score)).status_code == 200
        assert client.head(link(sid, score)).status_code == 200
    assert client.get(path_of(LINKS.unsubscribe_url(sid, expires))).status_code == 200
    assert client.get(link(sid) + "?step=comment").status_code == 200
    assert client.get(link(sid) + "?step=thanks").status_code == 200
    assert snapshot(db) == before
    assert survey_of(db, sid).state == "delivered"


def test_page_is_accessible_markup(client, db: Database):
    sid = seed_survey(db, channel="email", state="sent")
    html = client.get(link(sid)).text
    assert '<html lang="en">' in html
    assert "<fieldset" in html and "<legend>" in html
    for n in range(11):
        assert f'<label for="score-{n}">{n}</label>' in html
    assert 'aria-describedby="end-low"' in html and 'aria-describedby="end-high"' in html
    assert 'name="viewport"' in html
    assert 'data-autopost="1"' not in html  # no score in the link: nothing posts by itself
    assert '<button type="submit">Send</button>' in html


def test_security_headers(client, db: Database):
    sid = seed_survey(db, channel="email", state="sent")
    response = client.get(link(sid, 3))
    csp = response.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)[1]
    assert f'<script nonce="{nonce}">' in response.text
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "form-action 'self'" in csp
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"


# --- POST records -------------------------------------------------------------------------------


def test_score_then_followup_then_thanks(client, db: Database):
    sid = seed_survey(db, channel="email", state="delivered")
    url = link(sid)
    posted = client.post(url, data={"score": "9"}, follow_redirects=False)
    assert posted.status_code == 303 and posted.headers["location"] == "?step=comment"
    page = client.post(url, data={"score": "9"})
    assert page.status_code == 200
    assert "What did you like most?" in page.text and 'name="comment"' in page.text
    assert survey_of(db, sid).state == "answered"
    done = client.post(url, data={"comment": "Fast & friendly <b>"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "?step=thanks"
    thanks = client.get(url + "?step=thanks")
    assert "Thank you for your feedback!" in thanks.text
    survey = survey_of(db, sid)
    assert (survey.state, survey.score, survey.comment) == ("completed", 9, "Fast & friendly <b>")
    assert answers_of(db, sid) == [(9, None, "web"), (None, "Fast & friendly <b>", "web")]


def test_changed_mind_updates_the_score_and_keeps_history(client, db: Database):
    sid = seed_survey(db, channel="email", state="sent")
    client.post(link(sid), data={"score": "9"})
    page = client.post(link(sid), data={"score": "3"})
    assert "What should we improve?" in page.text
    assert survey_of(db, sid).score == 3
    assert [a[0] for a in answers_of(db, sid)] == [9, 3]
    # Posting the same score again (a double click, a reload) adds nothing.
    client.post(link(sid), data={"score": "3"})
    assert len(answers_of(db, sid)) == 2


def test_comment_is_escaped_and_html_cannot_be_injected(client, db: Database):
    sid = seed_survey(db, channel="email", state="sent")
    client.post(link(sid), data={"score": "7"})
    client.post(link(sid), data={"comment": "<script>alert(1)</script>"})
    assert survey_of(db, sid).comment == "<script>alert(1)</script>"
    page = client.get(link(sid) + "?step=comment")
    assert "<script>alert(1)" not in page.text


@pytest.mark.parametrize("form", [{}, {"score": "11"}, {"score": "-1"}, {"score": "nine"}])
def test_a_post_without_a_valid_score_is_refused_politely(client, db: Database, form):
    sid = seed_survey(db, channel="email", state="sent")
    before = snapshot(db)
    response = client.post(link(sid), data=form)
    assert response.status_code == 422
    assert 'role="alert"' in response.text and "Please choose a score" in response.text
    assert snapshot(db) == before


def test_a_comment_before_any_score_goes_back_to_the_scale(client, db: Database):
    sid = seed_survey(db, channel="email", state="sent")
    response = client.post(link(sid), data={"comment": "hello"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "?"
    assert answers_of(db, sid) == []


def test_an_oversized_body_is_413(client, db: Database):
    sid = seed_survey(db, channel="email", state="sent")
    before = snapshot(db)
    response = client.post(link(sid), data={"score": "9", "comment": "x" * 20_000})
    assert response.status_code == 413
    assert snapshot(db) == before


# --- tokens and closed surveys ------------------------------------------------------------------


def test_altered_token_is_403(client, db: Database):
    sid = seed_survey(db, channel="email", state="sent")
    good = link(sid)
    token = good.removeprefix("/s/")
    altered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for method in ("get", "post"):
        response = getattr(client, method)(
            f"/s/{altered}", **({"data": {"score": "9"}} if method == "post" else {})
        )
        assert response.status_code == 403
        assert "This link does not work" in response.text
    forged = AnswerLinks("another-key", BASE).url_for(sid, utcnow() + timedelta(days=3), 9)
    assert client.post(path_of(forged), data={"score": "9"}).status_code == 403
    assert answers_of(db, sid) == []


def test_expired_token_is_410(client, db: Database):
    sid = seed_survey(db, channel="email", state="sent", locale="fr-FR")
    expired = link(sid, 9, expires_in=-timedelta(minutes=1))
    page = client.get(expired)
    assert page.status_code == 410
    assert "Cette enquête est terminée" in page.text  # in the customer's language
    assert client.post(expired, data={"score": "9"}).status_code == 410
    assert answers_of(db, sid) == []


@pytest.mark.parametrize("state", ["opted_out", "no_response", "withdrawn", "suppressed"])
def test_closed_survey_is_410(client, db: Database, state):
    sid = seed_survey(db, channel="email", state=state)
    assert client.get(link(sid, 9)).status_code == 410
    response = client.post(link(sid), data={"score": "9"})
    assert response.status_code == 410 and "This survey has closed" in response.text
    assert answers_of(db, sid) == []


def test_invalid_token_page_follows_accept_language(client, db: Database):
    response = client.get("/s/garbage", headers={"Accept-Language": "ro-RO,ro;q=0.9,en;q=0.5"})
    assert response.status_code == 403 and '<html lang="ro">' in response.text
    assert "Acest link nu funcționează" in response.text


# --- locales ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "lang", "question", "followup"),
    [
        ("de-AT", "de", "Wie wahrscheinlich ist es", "Was hat Ihnen am besten gefallen?"),
        ("fr", "fr", "Quelle est la probabilité", "Qu&#39;avez-vous le plus apprécié ?"),
        ("ro-RO", "ro", "Cât de probabil este", "Ce v-a plăcut cel mai mult?"),
        ("ja-JP", "en", "How likely are you to recommend", "What did you like most?"),
        (None, "en", "How likely are you to recommend", "What did you like most?"),
    ],
)
def test_pages_are_localised(client, db: Database, locale, lang, question, followup):
    sid = seed_survey(db, channel="email", state="sent", locale=locale)
    page = client.get(link(sid, 10))
    assert f'<html lang="{lang}">' in page.text and question in page.text
    followup_page = client.post(link(sid), data={"score": "10"})
    assert followup in followup_page.text


def test_operator_followup_text_wins_over_the_translation(tmp_path: Path):
    path = tmp_path / "nps.toml"
    path.write_text('[survey.followup]\npromoter = "Was war super?"\n')
    config = load_config(path)
    assert followup_question(config, "promoter", "fr") == "Was war super?"
    assert followup_question(config, "passive", "fr") == "Que faudrait-il pour mériter un 10 ?"


def test_sms_reply_words():
    config = load_config(None)
    assert sms_reply_text(SmsReply("followup", "en", "detractor"), config) == (
        "Thank you! What should we improve? Just reply to this message."
    )
    ro = sms_reply_text(SmsReply("followup", "ro-RO", "detractor"), config)
    assert ro.isascii() and "imbunatatim" in ro  # GSM-7: no diacritics in Romanian SMS
    assert "STOP" in sms_reply_text(SmsReply("help", None), config)
    assert "Example Shop" in sms_reply_text(SmsReply("thanks", "de"), config)


def test_language_of():
    assert language_of("fr-CH, fr;q=0.9, en;q=0.8") == "fr"
    assert language_of("ja, de;q=0.3, en;q=0.2") == "de"
    assert language_of("en;q=0, de;q=0.1") == "de"
    assert language_of(None) == "en" and language_of("*") == "en"


# --- unsubscribe --------------------------------------------------------------------------------


def test_unsubscribe_get_confirms_and_post_revokes(client, db: Database):
    sid = seed_survey(db, channel="email", state="delivered")
    url = path_of(LINKS.unsubscribe_url(sid, utcnow() + timedelta(days=10)))
    before = snapshot(db)
    page = client.get(url)
    assert page.status_code == 200 and 'method="post"' in page.text
    assert snapshot(db) == before
    # RFC 8058 one-click, as a mailbox provider sends it.
    done = client.post(
        url,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert survey_of(db, sid).state == "opted_out"
    with db.session() as s:
        record = s.scalar(select(ConsentRecord).where(ConsentRecord.granted.is_(False)))
        assert record.channel == "email" and record.evidence_kind == "unsubscribe_link"
    assert client.post(url).status_code == 200  # again: harmless


@pytest.mark.parametrize("sqlstate", ["40P01", "40001"], ids=["deadlock", "serialization"])
def test_an_answer_meeting_a_transient_database_failure_is_recorded_once(
    pg_db: Database, runtime_for, sqlstate: str, caplog
):
    """The server aborts the post's transaction once (a deadlock, a serialisation failure):
    the post is run again, and the respondent's score and comment are kept, once each."""
    client = TestClient(create_app(runtime_for(pg_db)))
    sid = seed_survey(pg_db, channel="email", state="delivered")
    with failing_once(pg_db, "answers", "NEW.comment IS NOT NULL", sqlstate):
        done = client.post(
            link(sid), data={"score": "4", "comment": "too slow"}, follow_redirects=False
        )
    assert done.status_code == 303 and done.headers["location"] == "?step=thanks"
    survey = survey_of(pg_db, sid)
    assert (survey.state, survey.score, survey.comment) == ("completed", 4, "too slow")
    assert answers_of(pg_db, sid) == [(4, None, "web"), (None, "too slow", "web")]
    assert f"after a transient failure ({sqlstate})" in caplog.text
    # Run again after a commit whose answer was lost, the post finds its answer recorded.
    again = client.post(link(sid), data={"score": "4", "comment": "too slow"})
    assert again.status_code == 200
    assert answers_of(pg_db, sid) == [(4, None, "web"), (None, "too slow", "web")]


def test_an_unsubscribe_meeting_a_deadlock_is_applied_once(pg_db: Database, runtime_for):
    client = TestClient(create_app(runtime_for(pg_db)))
    sid = seed_survey(pg_db, channel="email", state="delivered")
    url = path_of(LINKS.unsubscribe_url(sid, utcnow() + timedelta(days=10)))
    with failing_once(pg_db, "consent_records", "NOT NEW.granted", "40P01"):
        done = client.post(url)
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert survey_of(pg_db, sid).state == "opted_out"
    with pg_db.session() as s:
        revoked = s.scalars(select(ConsentRecord.id).where(ConsentRecord.granted.is_(False)))
        assert len(list(revoked)) == 1


def test_unsubscribe_works_after_the_answer_window(client, db: Database):
    sid = seed_survey(db, channel="email", state="no_response")
    url = path_of(LINKS.unsubscribe_url(sid, utcnow() - timedelta(days=30)))
    assert client.post(url).status_code == 200
    with db.session() as s:
        assert s.scalar(select(ConsentRecord).where(ConsentRecord.granted.is_(False))) is not None


def test_unsubscribe_with_an_altered_token_is_403(client, db: Database):
    sid = seed_survey(db, channel="email", state="delivered")
    before = snapshot(db)
    url = path_of(AnswerLinks("other", BASE).unsubscribe_url(sid, utcnow() + timedelta(days=1)))
    assert client.post(url).status_code == 403
    assert snapshot(db) == before


# --- rate limits --------------------------------------------------------------------------------


def test_answer_page_is_rate_limited_per_client(db: Database, runtime_for):
    client = TestClient(create_app(runtime_for(db)), client=("203.0.113.9", 40000))
    # The burst is 30; on a slow machine the bucket may refill a token or two meanwhile, so the
    # 429 is looked for among the next requests rather than at exactly the 31st.
    statuses = [client.get("/s/not-a-token").status_code for _ in range(30)]
    assert statuses == [403] * 30
    following = [client.get("/s/not-a-token").status_code for _ in range(10)]
    assert 429 in following
    limited = client.get("/s/not-a-token")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    # Other routes have their own buckets; other clients their own.
    assert client.get("/healthz").status_code == 200
    other = TestClient(client.app, client=("203.0.113.10", 40000))
    assert other.get("/s/not-a-token").status_code == 403


def test_token_bucket_refills():
    clock = [0.0]
    buckets = TokenBuckets(per_second=2.0, burst=3, clock=lambda: clock[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # per client
    clock[0] = 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0


def test_token_buckets_are_bounded():
    buckets = TokenBuckets(per_second=1.0, burst=1, max_keys=10)
    for n in range(100):
        buckets.take(f"10.0.0.{n}")
    assert len(buckets) == 10


def test_client_key():
    assert client_key({"client": ("203.0.113.7", 5000)}) == "203.0.113.7"
    assert client_key({"client": ("::ffff:203.0.113.7", 1)}) == "203.0.113.7"
    assert client_key({"client": ("2001:db8:1:2:3:4:5:6", 1)}) == "2001:db8:1:2::/64"
    assert client_key({"client": ("2001:db8:1:2:ffff::1", 1)}) == "2001:db8:1:2::/64"
    assert client_key({}) is None and client_key({"client": None}) is None
    assert client_key({"client": ("testclient", 50000)}) is None  # in-process: not limited


def test_rate_limit_middleware_rules() -> None:
    app = FastAPI()

    @app.get("/s/{token}")
    def page(token: str) -> dict[str, str]:
        return {"token": token}

    @app.post("/s/{token}/unsubscribe")
    def unsubscribe(token: str) -> dict[str, str]:
        return {"token": token}

    clock = [0.0]
    app.add_middleware(
        RateLimit,
        rules=(
            RateRule("unsubscribe", "/s/", 1.0, 5, suffix="/unsubscribe"),
            RateRule("page", "/s/", 1.0, 2),
        ),
        clock=lambda: clock[0],
    )
    client = TestClient(app, client=("198.51.100.1", 1))
    assert [client.get("/s/x").status_code for _ in range(3)] == [200, 200, 429]
    assert [client.post("/s/x/unsubscribe").status_code for _ in range(5)] == [200] * 5
    clock[0] = 1.0
    assert client.get("/s/x").status_code == 200
    in_process = TestClient(app)  # no IP address: never limited
    assert {in_process.get("/s/x").status_code for _ in range(10)} == {200}
