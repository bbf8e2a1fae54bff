"""ledger fingerprints and webhook replay back-off

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

- ``inbound_events.fingerprint``: a digest of the event's content, so an ``event_id`` reused for a
  different event is answered as a conflict instead of a silent duplicate.
- ``inbound_events.attempts`` / ``retry_at``: a stored webhook whose application keeps failing is
  replayed with a growing pause, not on every scheduler pass.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fingerprint", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("retry_at", models.base.UtcDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("inbound_events", schema=None) as batch_op:
        batch_op.drop_column("retry_at")
        batch_op.drop_column("attempts")
        batch_op.drop_column("fingerprint")
