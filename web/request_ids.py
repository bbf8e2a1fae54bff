"""A request id for every HTTP request: in the log context of everything the request logs and
in the ``X-Request-ID`` response header."""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from channels.masking import mask_log_text
from logs.format import REQUEST_ID_HEADER, set_context

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _request_id_from(scope: Scope) -> str:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for name, value in headers:
        if name.lower() == b"x-request-id":
            offered = value.decode("latin-1").strip()
            # A load balancer's id is kept; anything long, odd or shaped like a contact or a
            # token is replaced, since it would be logged on every line of the request.
            if _SAFE_REQUEST_ID.fullmatch(offered) and mask_log_text(offered) == offered:
                return offered
            break
    return _new_request_id()


class _RequestIds:
    """Request ids of this process: a random 64-bit prefix drawn once (again in a forked child)
    and a counter, as 32 hex digits, unique across processes and cheap (no system call per
    request, unlike ``uuid4``)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = uuid.uuid4().hex[:16]
        self.counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_new_request_id = _RequestIds()


class RequestIdMiddleware:
    """Pure ASGI: a request id for every HTTP request, in the log context of everything it logs
    (uvicorn's access line included) and in the ``X-Request-ID`` response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id_from(scope)
        # Each request runs in its own task and context: the value ends with it, and is still
        # there when the server logs the response.
        set_context({"request_id": request_id})
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != header[0]
                ]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)
