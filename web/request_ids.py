"""A request id for every HTTP request: in the log context of everything the request logs and
in the ``X-Request-ID`` response header."""

from __future__ import annotations

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
    return uuid.uuid4().hex


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
