"""The reconciler: settle a send left in ``sending`` (an ambiguous provider answer, a crash or a
timeout after the provider call) from the provider's evidence, never by sending again.

A claim without its marker was never sent and is queued again. Otherwise, when the channel can be
asked (:func:`channels.reconcile.message_lookup`), this exact message is looked for in the
provider's log, with lookups spaced out by :class:`LookupSchedule`; found, it is ``sent``; nothing
found when the settle window ends, ``send_unknown``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from channels.base import Channel, ChannelName, OutboundMessage, SendError
from channels.reconcile import FoundMessage, message_lookup
from config import OperatorConfig
from dispatch.sending.common import log
from dispatch.sending.records import commit_sent
from models import Customer, MessageRecord, Survey, SurveyState, move

S = SurveyState

#: A lookup asks for messages created from this long before the send began (clock skew).
LOOKUP_MARGIN = timedelta(minutes=1)
#: Lookups for one unsettled send are spaced out, doubling from the first to the longest
#: interval; one last lookup is always made when the settle window ends.
LOOKUP_FIRST_INTERVAL = timedelta(minutes=1)
LOOKUP_MAX_INTERVAL = timedelta(minutes=15)

#: Renders a survey's message again, the way the send rendered it.
Render = Callable[[Survey, Customer], OutboundMessage]


class LookupSchedule:
    """When each unsettled send may be looked up next; only the settling process uses it."""

    def __init__(self) -> None:
        # survey id -> (next lookup at, current interval)
        self._lookups: dict[int, tuple[datetime, timedelta]] = {}
        self._lock = threading.Lock()

    def due(self, survey_id: int, now: datetime) -> bool:
        """Whether a lookup for ``survey_id`` may be made now; if so, the next one is set."""
        with self._lock:
            entry = self._lookups.get(survey_id)
            if entry is not None and now < entry[0]:
                return False
            interval = (
                LOOKUP_FIRST_INTERVAL if entry is None else min(entry[1] * 2, LOOKUP_MAX_INTERVAL)
            )
            self._lookups[survey_id] = (now + interval, interval)
            # Sends settled by a callback are never asked about again: drop stale entries.
            stale = [
                k for k, (at, _) in self._lookups.items() if at < now - LOOKUP_MAX_INTERVAL * 4
            ]
            for key in stale:
                del self._lookups[key]
            return True

    def forget(self, survey_id: int) -> None:
        with self._lock:
            self._lookups.pop(survey_id, None)


def settle(
    factory: sessionmaker[Session],
    channels: dict[ChannelName, Channel],
    lookups: LookupSchedule,
    render: Render,
    survey_id: int,
    config: OperatorConfig,
    now: datetime,
    give_up_after: timedelta,
) -> str:
    """Resolve a send left in ``sending``; returns what it did and never raises for a provider
    problem.

    A provider callback may already have moved it on. Otherwise, when the channel can be
    asked (:class:`~channels.reconcile.MessageLookup`), look for *this* message: same
    recipient, same sender, the exact body (rendered again here by ``render``, the way the
    send rendered it, and compared in memory), created after the send began, and not already
    recorded for another survey. Found: ``sent``. Lookups are spaced out while waiting; one
    that fails is logged and the clock keeps running. Nothing found ``give_up_after`` after
    the send began: ``send_unknown``, never a second send (a late callback can still move it
    to sent).
    """
    if give_back_if_never_called(factory, survey_id, now):
        return "queued again: the provider was never called"
    with factory() as session:
        survey = session.get(Survey, survey_id)
        if survey is None or survey.state != S.sending:
            lookups.forget(survey_id)
            return "settled already"
        customer = session.get(Customer, survey.customer_id)
        started = survey.sending_at or now
        channel_name = ChannelName(survey.channel)
        channel = channels.get(channel_name)
        lookup = message_lookup(channel)
        expected = expected_message(survey, customer, render) if lookup is not None else None
    overdue = now - started >= give_up_after
    lookup_failed = False
    if (
        expected is not None
        and lookup is not None
        and channel is not None
        and (overdue or lookups.due(survey_id, now))
    ):
        try:
            hits = lookup.find_sent_messages(expected, started - LOOKUP_MARGIN)
        except Exception as exc:  # whatever the provider or its client raised
            lookup_failed = True
            log.warning(
                "survey %s: provider lookup failed (%s: %s); the settle clock keeps running",
                survey_id,
                type(exc).__name__,
                exc if isinstance(exc, SendError) else "",
            )
        else:
            ours = not_recorded_elsewhere(factory, survey_id, hits)
            if ours is not None:
                return record_found(
                    factory,
                    lookups,
                    survey_id,
                    channel_name,
                    channel.provider,
                    ours,
                    started,
                    config,
                    now,
                )
    if not overdue:
        return (
            "lookup failed; waiting for a callback" if lookup_failed else "waiting for a callback"
        )
    why = f"no callback and no provider record {give_up_after} after sending began"
    with factory() as session, session.begin():
        move(
            session,
            survey_id,
            S.send_unknown,
            reason=why,
            only_from=[S.sending],
            now=now,
            final_reason=why,
        )
    lookups.forget(survey_id)
    log.error("ALERT survey %s: send outcome unknown; not re-sent", survey_id)
    return "send_unknown"


def give_back_if_never_called(
    factory: sessionmaker[Session], survey_id: int, now: datetime
) -> bool:
    """A claim whose worker stopped before the provider call (no ``sending_at`` marker: a
    crash or a restart during the rate-limit wait) goes back to ``queued``; the scheduler
    enqueues it again. The row is locked first, so a worker setting its marker at this moment
    either wins (and this does nothing) or finds the row queued (and sends nothing)."""
    with factory() as session, session.begin():
        survey = session.scalar(select(Survey).where(Survey.id == survey_id).with_for_update())
        if survey is None or survey.state != S.sending or survey.sending_at is not None:
            return False
        move(
            session,
            survey_id,
            S.queued,
            reason="the worker stopped before calling the provider",
            only_from=[S.sending],
            now=now,
            queued_at=now,
            # The provider was never called: not an attempt.
            attempts=max(survey.attempts - 1, 0),
        )
    log.warning("survey %s: claimed but never sent; queued again", survey_id)
    return True


def expected_message(
    survey: Survey, customer: Customer | None, render: Render
) -> OutboundMessage | None:
    """The invitation as the send rendered it, or ``None`` when it cannot be looked for (an
    erased customer, no valid contact any more)."""
    if customer is None or customer.erased_at is not None:
        return None
    contact, _ = customer.contact_for(survey.channel)
    if contact is None:
        return None
    try:
        return render(survey, customer)
    except Exception as exc:
        log.warning("survey %s: cannot render the message to look for: %s", survey.id, exc)
        return None


def not_recorded_elsewhere(
    factory: sessionmaker[Session], survey_id: int, hits: list[FoundMessage]
) -> FoundMessage | None:
    """The first hit whose id no other survey's row or message already holds."""
    if not hits:
        return None
    ids = [hit.provider_message_id for hit in hits]
    with factory() as session:
        taken = set(
            session.scalars(
                select(Survey.provider_message_id).where(
                    Survey.provider_message_id.in_(ids), Survey.id != survey_id
                )
            )
        ) | set(
            session.scalars(
                select(MessageRecord.provider_message_id).where(
                    MessageRecord.provider_message_id.in_(ids),
                    MessageRecord.survey_id != survey_id,
                )
            )
        )
    return next((hit for hit in hits if hit.provider_message_id not in taken), None)


def record_found(
    factory: sessionmaker[Session],
    lookups: LookupSchedule,
    survey_id: int,
    channel: ChannelName,
    provider: str,
    found: FoundMessage,
    started: datetime,
    config: OperatorConfig,
    now: datetime,
) -> str:
    """``sent`` from the provider's log: the message found is the invitation."""
    commit_sent(
        factory,
        survey_id,
        channel=channel.value,
        provider=provider,
        provider_message_id=found.provider_message_id,
        segments=None,
        body=None,
        sent_at=found.created_at or started,
        reason="found in the provider's log",
        config=config,
        now=now,
    )
    lookups.forget(survey_id)
    # Not the provider's message id: it leads to the provider's copy of the message.
    log.info("survey %s: found in %s's log", survey_id, provider)
    return "sent (found by lookup)"
