"""twilio_sms channel."""
