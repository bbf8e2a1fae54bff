"""The console channel: prints each message instead of sending it (``demo``, quick starts, and
any channel whose provider is not configured), and keeps them in ``sent`` for tests.

The summary line masks the recipient. The body is printed as the customer would read it only to
a stream the caller chose (the demo's outbox, a test); on the default stdout, which a production
process without provider credentials shares with its logs, answer links are masked: a link's token
both records a score and unsubscribes, so it is a secret of the customer's.
"""

from __future__ import annotations

import sys
import threading
import uuid
from typing import TextIO

from channels.base import ChannelName, OutboundMessage, SendReceipt
from channels.masking import mask_answer_links, mask_email, mask_phone

__all__ = ["PROVIDER", "ConsoleChannel"]

PROVIDER = "console"


class ConsoleChannel:
    provider: str = PROVIDER

    def __init__(self, channel: ChannelName, stream: TextIO | None = None) -> None:
        self.name = ChannelName(channel)
        self.stream = stream
        self.sent: list[OutboundMessage] = []
        self._lock = threading.Lock()

    def _masked(self, to: str) -> str:
        return mask_email(to) if self.name == ChannelName.email else mask_phone(to)

    def send(self, message: OutboundMessage) -> SendReceipt:
        message_id = f"console-{uuid.uuid4()}"
        kind = "alert" if message.to_staff else "reminder" if message.is_reminder else "invitation"
        summary = f"[{self.name} {kind}] survey {message.survey_id} -> {self._masked(message.to)}"
        if message.subject:
            summary += f" | {message.subject}"
        text = (
            message.body_text if self.stream is not None else mask_answer_links(message.body_text)
        )
        body = "\n".join(f"    {line}" if line else "" for line in text.splitlines())
        stream = self.stream if self.stream is not None else sys.stdout
        with self._lock:
            self.sent.append(message)
            stream.write(f"{summary}\n{body}\n")
            stream.flush()
        return SendReceipt(provider=PROVIDER, provider_message_id=message_id)
