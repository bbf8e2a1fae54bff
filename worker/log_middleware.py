"""Logging in the worker processes dramatiq starts: set up on boot, and every line logged while
a message is processed tagged with the message's id and the survey or event it is about (never
with the message's arguments, which carry contacts)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy

from config.settings import environ
from logs.format import clear_context, configure_logging, set_context


@functools.lru_cache(maxsize=64)
def _signature_of(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def _message_fields(broker: dramatiq.Broker, message: MessageProxy) -> dict[str, str]:
    fields = {"message_id": str(message.message_id)}
    try:
        fn = broker.get_actor(message.actor_name).fn
        bound = _signature_of(fn).bind_partial(*message.args, **message.kwargs).arguments
    except Exception:  # an unknown actor or arguments that do not fit: dramatiq will say so
        return fields
    survey_id = bound.get("survey_id")
    if isinstance(survey_id, int) and not isinstance(survey_id, bool):
        fields["survey_id"] = str(survey_id)
    event = bound.get("event")
    if isinstance(event, Mapping) and isinstance(event.get("event_id"), str):
        fields["event_id"] = str(event["event_id"])[:200]
    return fields


class LoggingMiddleware(dramatiq.Middleware):
    """Sets up logging in each worker process that dramatiq's CLI starts, and tags the lines
    logged while a message is processed with its id and the survey or event it is about."""

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        configure_logging(environ())

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        set_context(_message_fields(broker, message))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        clear_context()

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        clear_context()
