"""Bearer and basic auth with constant-time comparison."""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import HTTPException, Request


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def require_bearer(request: Request, expected: str | None) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if expected is None or scheme.lower() != "bearer" or not token or not _equal(token, expected):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_basic(request: Request, password: str | None) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    ok = False
    if password is not None and scheme.lower() == "basic":
        try:
            _, _, given = base64.b64decode(encoded, validate=True).decode().partition(":")
            ok = _equal(given, password)
        except (binascii.Error, UnicodeDecodeError):
            ok = False
    if not ok:
        raise HTTPException(
            status_code=401,
            detail="operator password required",
            headers={"WWW-Authenticate": 'Basic realm="nps-dispatch"'},
        )
