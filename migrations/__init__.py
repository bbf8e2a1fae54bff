"""Alembic migrations; run them with `nps-dispatch db upgrade`."""
