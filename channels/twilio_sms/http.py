"""A ``twilio.http.HttpClient`` that sends through httpx.

The official client builds the requests (URLs, form fields, auth, headers); this class only
carries them, so tests mock Twilio at the HTTP boundary with respx, and ``TWILIO_API_BASE``
(a sandbox, a mock server) replaces the ``https://api.twilio.com`` prefix. Transport exceptions
(``httpx.ConnectError``, ``httpx.ReadTimeout``...) propagate unchanged: the channel classifies
them. The last response of the current thread is kept, because ``TwilioRestException`` drops
the headers and a 429's ``Retry-After`` lives there; so is whether a request was handed to httpx
since :meth:`HttpxTwilioClient.reset`, because an error raised before that proves nothing left.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
from twilio.http import HttpClient
from twilio.http.response import Response

__all__ = ["DEFAULT_API_BASE", "HttpxTwilioClient"]

DEFAULT_API_BASE = "https://api.twilio.com"

log = logging.getLogger(__name__)


class HttpxTwilioClient(HttpClient):  # type: ignore[misc]  # twilio is untyped for mypy
    def __init__(
        self,
        api_base: str = DEFAULT_API_BASE,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(log, False, timeout)
        self.api_base = api_base.rstrip("/")
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)
        self._local = threading.local()

    def rewrite(self, uri: str) -> str:
        """``https://api.twilio.com/2010-04-01/...`` -> ``{api_base}/2010-04-01/...``."""
        if self.api_base != DEFAULT_API_BASE and (
            uri == DEFAULT_API_BASE or uri.startswith(DEFAULT_API_BASE + "/")
        ):
            return self.api_base + uri[len(DEFAULT_API_BASE) :]
        return uri

    def reset(self) -> None:
        """Forget the calling thread's last request (call before each API call)."""
        self._local.response = None
        self._local.attempted = False

    @property
    def attempted(self) -> bool:
        """Whether the calling thread handed a request to httpx since :meth:`reset`."""
        return bool(getattr(self._local, "attempted", False))

    @property
    def last_response(self) -> Response | None:
        """The last response received by the calling thread (``None`` after a transport error)."""
        response: Response | None = getattr(self._local, "response", None)
        return response

    def request(
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        self._local.response = None
        effective_timeout = timeout if timeout is not None else self.timeout
        kwargs: dict[str, Any] = {
            "params": params or None,
            "headers": headers or None,
            "auth": auth,
            "follow_redirects": allow_redirects,
        }
        if effective_timeout is not None:
            kwargs["timeout"] = effective_timeout
        if data:
            kwargs["data"] = data
        self._local.attempted = True
        reply = self._client.request(method, self.rewrite(uri), **kwargs)
        response = Response(reply.status_code, reply.text, reply.headers)
        self._local.response = response
        return response

    def close(self) -> None:
        self._client.close()
