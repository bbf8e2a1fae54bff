"""The providers' signatures, from the channels' own fakes (see channels/*/fake.py)."""

from channels.sendgrid_email.fake import SendGridSigner
from channels.twilio_sms.fake import TwilioSigner

__all__ = ["SendGridSigner", "TwilioSigner"]
