"""console channel."""
