"""Stand-ins for the outside world used by the benchmarks: a fake Twilio and SendGrid."""
