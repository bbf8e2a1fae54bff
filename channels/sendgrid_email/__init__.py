"""sendgrid_email channel."""
