"""Signed answer links: ``{base}/s/{token}``, the token naming one survey until it expires.

The token is ``itsdangerous``'s URL-safe serialisation of ``[survey_id, expiry_epoch]`` (salt
``"answer-link"``, HMAC-SHA256): no personal data, so a forwarded or logged link gives away nothing
but the right to answer that one survey. A token is accepted only in the exact form we issue it
(the signature's unused base64 bits cannot be flipped to make a second valid spelling).

Links are opened by mail scanners too: the web app renders the page on GET and records on POST
(a scanner follows every link of a mail before its reader does, so a GET must never record an
answer); ``?score=N`` only preselects the answer.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from itsdangerous import BadData, URLSafeSerializer

__all__ = ["AnswerLinkError", "AnswerLinks", "ExpiredToken", "InvalidToken"]

SALT = "answer-link"


class AnswerLinkError(ValueError):
    """Base of the two refusals below."""


class InvalidToken(AnswerLinkError):
    """Not a token we issued: altered, truncated, signed with another key or salt."""


class ExpiredToken(AnswerLinkError):
    """A genuine token whose survey window has closed; ``survey_id`` says which survey."""

    def __init__(self, survey_id: int, expired_at: datetime) -> None:
        super().__init__(f"answer link for survey {survey_id} expired at {expired_at.isoformat()}")
        self.survey_id = survey_id
        self.expired_at = expired_at


def _epoch(moment: datetime) -> int:
    # A naive datetime is taken as UTC (the database stores UTC), never as local time.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


class AnswerLinks:
    def __init__(self, secret_key: str, public_base_url: str) -> None:
        if not secret_key:
            raise ValueError("AnswerLinks needs a non-empty secret key")
        self._serializer = URLSafeSerializer(
            secret_key, salt=SALT, signer_kwargs={"digest_method": hashlib.sha256}
        )
        self.public_base_url = public_base_url.rstrip("/")

    def token_for(self, survey_id: int, expires_at: datetime) -> str:
        return self._serializer.dumps([int(survey_id), _epoch(expires_at)])

    def url_for(self, survey_id: int, expires_at: datetime, score: int | None = None) -> str:
        url = f"{self.public_base_url}/s/{quote(self.token_for(survey_id, expires_at), safe='')}"
        if score is not None:
            if not 0 <= score <= 10:
                raise ValueError(f"score must be 0..10, not {score}")
            url += f"?score={int(score)}"
        return url

    def unsubscribe_url(self, survey_id: int, expires_at: datetime) -> str:
        token = quote(self.token_for(survey_id, expires_at), safe="")
        return f"{self.public_base_url}/s/{token}/unsubscribe"

    def email_urls(self, survey_id: int, expires_at: datetime) -> tuple[list[str], str]:
        """An email's links: one per score 0..10 and the unsubscribe link, the same as
        :meth:`url_for` and :meth:`unsubscribe_url` give, from a single signing (every link of
        one survey carries the same token)."""
        page = f"{self.public_base_url}/s/{quote(self.token_for(survey_id, expires_at), safe='')}"
        return [f"{page}?score={score}" for score in range(11)], f"{page}/unsubscribe"

    def verify(self, token: str, now: datetime) -> int:
        """The survey id of a genuine, unexpired token; else :class:`InvalidToken` or
        :class:`ExpiredToken`."""
        try:
            payload: Any = self._serializer.loads(token)
        except (BadData, UnicodeError, ValueError) as exc:
            raise InvalidToken("answer link refused: bad signature or format") from exc
        if (
            not isinstance(payload, list)
            or len(payload) != 2
            or not all(type(part) is int for part in payload)
        ):
            raise InvalidToken("answer link refused: unexpected payload")
        survey_id, expires = payload
        # Only the canonical spelling is accepted (constant-time compare).
        if not hmac.compare_digest(self._serializer.dumps(payload).encode(), token.encode()):
            raise InvalidToken("answer link refused: not in canonical form")
        if _epoch(now) >= expires:
            raise ExpiredToken(survey_id, datetime.fromtimestamp(expires, UTC))
        return int(survey_id)
