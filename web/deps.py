"""Access to the process runtime from a request."""

from __future__ import annotations

from typing import cast

from fastapi import Request

from wiring.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.runtime)
