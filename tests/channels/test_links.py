"""Signed answer links."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from channels.links import AnswerLinks, ExpiredToken, InvalidToken

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
EXPIRES = NOW + timedelta(days=14)
BASE = "https://nps.example"


@pytest.fixture
def links() -> AnswerLinks:
    return AnswerLinks("a-long-random-secret-key", BASE + "/")


def test_round_trip(links):
    token = links.token_for(42, EXPIRES)
    assert links.verify(token, NOW) == 42
    assert links.verify(token, EXPIRES - timedelta(seconds=1)) == 42


def test_urls(links):
    token = links.token_for(42, EXPIRES)
    assert links.url_for(42, EXPIRES) == f"{BASE}/s/{token}"
    assert links.url_for(42, EXPIRES, score=0) == f"{BASE}/s/{token}?score=0"
    assert links.url_for(42, EXPIRES, score=10) == f"{BASE}/s/{token}?score=10"
    assert links.unsubscribe_url(42, EXPIRES) == f"{BASE}/s/{token}/unsubscribe"
    path = urlsplit(links.url_for(42, EXPIRES, score=7))
    assert links.verify(path.path.split("/")[2], NOW) == 42
    assert parse_qs(path.query) == {"score": ["7"]}
    with pytest.raises(ValueError):
        links.url_for(42, EXPIRES, score=11)


def test_every_single_altered_character_is_refused(links):
    token = links.token_for(42, EXPIRES)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    for position, original in enumerate(token):
        for replacement in (alphabet[(alphabet.index(original) + 1) % len(alphabet)], "A", "z"):
            if replacement == original:
                continue
            altered = token[:position] + replacement + token[position + 1 :]
            with pytest.raises(InvalidToken):
                links.verify(altered, NOW)


def test_no_second_spelling_of_the_signature(links):
    # The last base64 character carries unused bits: plain itsdangerous accepts a few
    # variants of it. Only the canonical token is valid here.
    token = links.token_for(42, EXPIRES)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for replacement in alphabet.replace(token[-1], ""):
        with pytest.raises(InvalidToken):
            links.verify(token[:-1] + replacement, NOW)


@pytest.mark.parametrize(
    "bad", ["", "x", "a.b", "not-a-token.at-all", "\u00e9t\u00e9.x", "42.2000000000"]
)
def test_garbage_is_refused(links, bad):
    with pytest.raises(InvalidToken):
        links.verify(bad, NOW)


def test_another_key_or_survey_is_refused(links):
    other = AnswerLinks("another-secret", BASE)
    with pytest.raises(InvalidToken):
        links.verify(other.token_for(42, EXPIRES), NOW)


def test_expired_is_refused_with_its_own_error(links):
    token = links.token_for(42, EXPIRES)
    with pytest.raises(ExpiredToken) as caught:
        links.verify(token, EXPIRES)
    assert caught.value.survey_id == 42
    assert caught.value.expired_at == EXPIRES
    assert not isinstance(caught.value, InvalidToken)
    with pytest.raises(ExpiredToken):
        links.verify(token, EXPIRES + timedelta(days=1))


def test_altered_expired_token_is_invalid_not_expired(links):
    token = links.token_for(42, NOW - timedelta(days=1))
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(InvalidToken):
        links.verify(altered, NOW)


def test_naive_datetimes_are_utc(links):
    token = links.token_for(7, EXPIRES.replace(tzinfo=None))
    assert links.verify(token, NOW.replace(tzinfo=None)) == 7
    assert token == links.token_for(7, EXPIRES)


def test_no_personal_data_in_the_token(links):
    token = links.token_for(42, EXPIRES)
    payload_part = token.split(".")[0]
    decoded = json.loads(base64.urlsafe_b64decode(payload_part + "=" * (-len(payload_part) % 4)))
    assert decoded == [42, int(EXPIRES.timestamp())]
    for secret in ("ana", "example.com", "+40", "a-long-random-secret-key"):
        assert secret not in token.lower()


def test_needs_a_key():
    with pytest.raises(ValueError):
        AnswerLinks("", BASE)
