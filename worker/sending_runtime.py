"""Builds the process's :class:`Sender` from its runtime (channels and answer links from env)."""

from __future__ import annotations

import secrets
from typing import cast

from channels.links import AnswerLinks
from channels.registry import channels_from_env
from worker.runtime import Runtime
from worker.sending import Sender


def answer_links(runtime: Runtime) -> AnswerLinks:
    links = runtime.extras.get("links")
    if links is None:
        # Only `demo` runs without NPS_SECRET_KEY (the other commands refuse to start): a
        # per-process key there, since demo links live as long as the process.
        key = runtime.settings.secret_key or secrets.token_urlsafe(32)
        links = runtime.extras["links"] = AnswerLinks(key, runtime.settings.public_base_url)
    return cast(AnswerLinks, links)


def sender(runtime: Runtime) -> Sender:
    existing = runtime.extras.get("sender")
    if existing is None:
        existing = runtime.extras["sender"] = Sender(
            runtime.factory,
            channels_from_env(runtime.settings.env),
            answer_links(runtime),
            runtime.settings.public_base_url,
        )
    return cast(Sender, existing)
