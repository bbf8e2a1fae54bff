"""Building the message of an invitation or a reminder from fresh rows: the rendered text, the
answer and unsubscribe links of an email, and the status callback address the channel names."""

from __future__ import annotations

from datetime import datetime

from channels.base import ChannelName, OutboundMessage
from channels.links import AnswerLinks
from channels.messages import render_email, render_sms
from config import OperatorConfig
from dispatch.sending.common import SendInvariantError
from models import Customer, Survey


def build_message(
    survey: Survey,
    customer: Customer,
    config: OperatorConfig,
    now: datetime,
    links: AnswerLinks,
    status_callback_url: str | None,
    *,
    is_reminder: bool = False,
) -> OutboundMessage:
    """The message for ``survey`` on its channel. ``status_callback_url`` is the address the
    channel gave for this survey's status reports (``None``: it takes none)."""
    channel = ChannelName(survey.channel)
    contact, _ = customer.contact_for(survey.channel)
    if contact is None:
        raise SendInvariantError(
            f"survey {survey.id}: no {survey.channel} contact to send to after the re-check"
        )
    expires = survey.closes_at or now + config.survey.response_window
    locale = customer.locale or "en"
    if channel == ChannelName.sms:
        return OutboundMessage(
            survey_id=survey.id,
            channel=channel,
            to=contact,
            body_text=render_sms(locale, config.survey.shop_name, customer.first_name, is_reminder),
            status_callback_url=status_callback_url,
            is_reminder=is_reminder,
        )
    score_links, unsubscribe = links.email_urls(survey.id, expires)
    email = render_email(
        locale,
        config.survey.shop_name,
        customer.first_name,
        score_links,
        unsubscribe,
        is_reminder,
    )
    return OutboundMessage(
        survey_id=survey.id,
        channel=channel,
        to=contact,
        subject=email.subject,
        body_text=email.text,
        body_html=email.html,
        unsubscribe_url=unsubscribe,
        status_callback_url=status_callback_url,
        is_reminder=is_reminder,
    )
