"""How every process logs: one format, secrets and personal data redacted, request and message
ids attached."""
