"""Bearer and basic auth with constant-time comparison; a refusal is 401 ``unauthorized`` with
its ``WWW-Authenticate`` challenge."""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import Request

from web.errors import ApiError


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def require_bearer(request: Request, expected: str | None) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if expected is None or scheme.lower() != "bearer" or not token or not _equal(token, expected):
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer $NPS_INGEST_TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _basic_password_is(encoded: str, password: str) -> bool:
    """Whether HTTP basic credentials carry ``password`` (any user name, as operators use one
    shared password)."""
    try:
        _, _, given = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return _equal(given, password)


BASIC_CHALLENGE = 'Basic realm="nps-dispatch"'


def require_basic(request: Request, password: str | None) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    ok = (
        password is not None and scheme.lower() == "basic" and _basic_password_is(encoded, password)
    )
    if not ok:
        raise ApiError(
            401,
            "unauthorized",
            "operator password required (HTTP basic auth)",
            headers={"WWW-Authenticate": BASIC_CHALLENGE},
        )


def require_basic_or_bearer(request: Request, password: str | None, token: str | None) -> None:
    """HTTP basic with the operators' ``password``, or ``Authorization: Bearer <token>`` when a
    token is configured (Prometheus can send either). 401 names both schemes it would accept;
    with neither configured every request is refused."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and token is not None and _equal(credentials.strip(), token):
        return
    if scheme == "basic" and password is not None and _basic_password_is(credentials, password):
        return
    challenges = [BASIC_CHALLENGE]
    if token is not None:
        challenges.append('Bearer realm="nps-dispatch"')
    raise ApiError(
        401,
        "unauthorized",
        "operator password or metrics token required",
        headers={"WWW-Authenticate": ", ".join(challenges)},
    )
