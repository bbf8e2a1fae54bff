"""Sending email through SendGrid's v3 Mail Send API.

The body is the one ``sendgrid.helpers.mail.Mail`` builds (for a plain recipient address it is
put together directly, the same JSON at a tenth of the cost; a recipient written with a name
goes through the helper), POSTed with httpx (the ``sendgrid`` client uses urllib, which respx
cannot mock) to ``{api_base}/v3/mail/send`` over one client, whose connections are kept alive
between sends; SendGrid answers 202 with an ``X-Message-Id`` header. ``custom_args`` carries
our survey id and nothing else: SendGrid keeps custom args and categories for good, so no
personal data ever goes there.

Any 2xx answer is taken as accepted, with or without ``X-Message-Id``. A 2xx is SendGrid saying
it took the mail (sandbox mode answers 200 without an id), so sending again would be the second
copy we promise never to send, and treating it as unknown would end a mail that was taken as
``send_unknown``. Without the id nothing is lost for tracking: every event SendGrid sends about
the mail carries our ``survey_id`` custom arg, which is how the events find the survey. The
receipt then has no provider message id (a made-up one would not match the ``sg_message_id`` of
the events). Error answers are classified in :mod:`channels.sendgrid_email.errors`: only those
that prove the mail was not accepted are retried.
"""

from __future__ import annotations

import logging
from email.utils import parseaddr
from functools import lru_cache
from typing import Any

import httpx
from sendgrid.helpers.mail import (
    Asm,
    Content,
    CustomArg,
    From,
    GroupId,
    Header,
    Mail,
    MimeType,
    To,
)
from sendgrid.helpers.mail.validators import ValidateApiKey

from channels.base import ChannelName, OutboundMessage, SendReceipt
from channels.masking import mask_email
from channels.sendgrid_email.errors import PROVIDER, from_response, from_transport_error

__all__ = ["DEFAULT_API_BASE", "SendGridEmailChannel", "build_mail"]

DEFAULT_API_BASE = "https://api.sendgrid.com"

log = logging.getLogger(__name__)


def _sender(from_email: str) -> Any:
    """``"Shop <noreply@shop.example>"`` or a bare address -> a SendGrid ``From``."""
    name, address = parseaddr(from_email)
    if not address or "@" not in address:
        raise ValueError("SENDGRID_FROM must be an email address, optionally 'Name <address>'")
    return From(address, name or None)


def _build_with_helper(
    message: OutboundMessage, from_email: str, unsubscribe_group_id: int | None
) -> dict[str, Any]:
    """The ``/v3/mail/send`` JSON body as ``sendgrid.helpers.mail.Mail`` builds it."""
    mail = Mail(from_email=_sender(from_email), to_emails=To(message.to), subject=message.subject)
    mail.add_content(Content(MimeType.text, message.body_text))
    if message.body_html:
        mail.add_content(Content(MimeType.html, message.body_html))
    mail.add_custom_arg(CustomArg("survey_id", str(message.survey_id)))
    if unsubscribe_group_id is not None and not message.to_staff:
        mail.asm = Asm(GroupId(unsubscribe_group_id))
    if message.unsubscribe_url:
        mail.add_header(Header("List-Unsubscribe", f"<{message.unsubscribe_url}>"))
        mail.add_header(Header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    body: dict[str, Any] = mail.get()
    return body


@lru_cache(maxsize=8)
def _from_json(from_email: str) -> dict[str, str]:
    """The sender as the helper writes it (parsed once per address)."""
    parsed: dict[str, str] = _sender(from_email).get()
    return parsed


_API_KEYS = ValidateApiKey()


def build_mail(
    message: OutboundMessage, from_email: str, unsubscribe_group_id: int | None
) -> dict[str, Any]:
    """The ``/v3/mail/send`` JSON body for one message: the helper's, written directly when
    the recipient is a plain address (its content checked for API keys, as the helper does)."""
    if not message.subject:
        raise ValueError("an email needs a subject")
    name, address = parseaddr(message.to)
    if name or address != message.to or "@" not in address:
        return _build_with_helper(message, from_email, unsubscribe_group_id)
    content = [{"type": "text/plain", "value": message.body_text}]
    if message.body_html:
        content.append({"type": "text/html", "value": message.body_html})
    for part in content:
        _API_KEYS.validate_message_text(part["value"])
    body: dict[str, Any] = {
        "from": dict(_from_json(from_email)),
        "subject": message.subject,
        "personalizations": [{"to": [{"email": address}]}],
        "content": content,
    }
    if message.unsubscribe_url:
        body["headers"] = {
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "List-Unsubscribe": f"<{message.unsubscribe_url}>",
        }
    body["custom_args"] = {"survey_id": str(message.survey_id)}
    if unsubscribe_group_id is not None and not message.to_staff:
        body["asm"] = {"group_id": unsubscribe_group_id}
    return body


class SendGridEmailChannel:
    name: ChannelName = ChannelName.email
    provider: str = PROVIDER

    def __init__(
        self,
        api_key: str,
        from_email: str,
        unsubscribe_group_id: int | None = None,
        api_base: str = DEFAULT_API_BASE,
        timeout: float = 10.0,
        *,
        http: httpx.Client | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("SendGridEmailChannel needs an API key")
        _sender(from_email)  # fail at start-up, not at the first send
        self.from_email = from_email
        self.unsubscribe_group_id = unsubscribe_group_id
        self.url = f"{api_base.rstrip('/')}/v3/mail/send"
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._http = http or httpx.Client(timeout=timeout, follow_redirects=False)
        self._timeout = timeout

    def send(self, message: OutboundMessage) -> SendReceipt:
        body = build_mail(message, self.from_email, self.unsubscribe_group_id)
        try:
            response = self._http.post(
                self.url, json=body, headers=self._headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            error = from_transport_error(exc)
            log.warning(
                "sendgrid: survey %s to %s: %s", message.survey_id, mask_email(message.to), error
            )
            raise error from exc
        if not response.is_success:
            error = from_response(response)
            log.warning(
                "sendgrid: survey %s to %s: %s %s",
                message.survey_id,
                mask_email(message.to),
                type(error).__name__,
                error,
            )
            raise error
        message_id = response.headers.get("X-Message-Id") or None
        if message_id is None:
            # Accepted all the same (see the module docstring): never sent again.
            log.warning(
                "sendgrid: survey %s accepted (HTTP %s) without X-Message-Id",
                message.survey_id,
                response.status_code,
            )
        # Not the X-Message-Id: it leads to SendGrid's copy of the message (address and body),
        # and it is emptied from our rows when a customer is erased. DEBUG: the send path logs
        # the outcome of every send once, at INFO.
        log.debug("sendgrid: survey %s accepted", message.survey_id)
        return SendReceipt(provider=PROVIDER, provider_message_id=message_id)

    def close(self) -> None:
        self._http.close()
