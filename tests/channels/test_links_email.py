"""An email's links come from one signing: the same links as one signing per link gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from channels.links import AnswerLinks

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def test_email_urls_are_the_links_signed_one_by_one():
    links = AnswerLinks("a-long-random-secret-key", "https://nps.example/")
    for survey_id, expires in ((42, NOW + timedelta(days=14)), (7, NOW + timedelta(days=1))):
        scores, unsubscribe = links.email_urls(survey_id, expires)
        assert scores == [links.url_for(survey_id, expires, score=n) for n in range(11)]
        assert unsubscribe == links.unsubscribe_url(survey_id, expires)
        token = scores[0].split("/s/")[1].split("?")[0]
        assert links.verify(token, NOW) == survey_id
