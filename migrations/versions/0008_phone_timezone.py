"""customers.phone_timezone: the zone a phone number gives, derived once when it is stored

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

Planning a survey parsed the stored number again each time (on the purchase, and again on each
anchor event that re-plans it). The column is nullable and not back-filled: a customer stored
before it has NULL there, and planning then parses the number as before, until an event brings
the number again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("customers", sa.Column("phone_timezone", sa.String(64), nullable=True))


def downgrade() -> None:
    # A trigger on the column must go first. 0009 drops its own; a database migrated while this
    # revision installed the trigger itself still has one here.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS customers_phone_timezone_follows_phone ON customers")
        op.execute("DROP FUNCTION IF EXISTS customers_phone_timezone_follows_phone()")
    else:
        op.execute("DROP TRIGGER IF EXISTS customers_phone_timezone_follows_phone")
    op.drop_column("customers", "phone_timezone")
