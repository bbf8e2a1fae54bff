"""customers.phone_timezone: the zone a phone number gives, derived once when it is stored

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

Planning a survey parsed the stored number again each time (on the purchase, and again on each
anchor event that re-plans it). The column is nullable and not back-filled: a customer stored
before it has NULL there, and planning then parses the number as before.

A trigger keeps the zone from outliving the number it was derived from: an UPDATE that changes
``phone`` without also changing ``phone_timezone`` sets the zone to NULL. Code that predates the
column (the previous release, still running during a deploy or after a rollback) changes or
erases a number without knowing the zone; without the trigger the old zone would stay, and
surveys would be planned in it (or an erased person's zone would survive). NULL costs only a
parse at the next plan; the same holds when a new number happens to give the same zone.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POSTGRES_FUNCTION = """
CREATE FUNCTION customers_phone_timezone_follows_phone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.phone_timezone := NULL;
    RETURN NEW;
END
$$
"""

POSTGRES_TRIGGER = """
CREATE TRIGGER customers_phone_timezone_follows_phone
BEFORE UPDATE OF phone ON customers
FOR EACH ROW
WHEN (NEW.phone IS DISTINCT FROM OLD.phone
      AND NEW.phone_timezone IS NOT DISTINCT FROM OLD.phone_timezone)
EXECUTE FUNCTION customers_phone_timezone_follows_phone()
"""

# SQLite cannot assign to NEW: the row is updated again after the statement's own update.
SQLITE_TRIGGER = """
CREATE TRIGGER customers_phone_timezone_follows_phone
AFTER UPDATE OF phone ON customers
FOR EACH ROW
WHEN NEW.phone IS NOT OLD.phone AND NEW.phone_timezone IS OLD.phone_timezone
BEGIN
    UPDATE customers SET phone_timezone = NULL WHERE id = NEW.id;
END
"""


def upgrade() -> None:
    op.add_column("customers", sa.Column("phone_timezone", sa.String(64), nullable=True))
    if _postgres():
        op.execute(POSTGRES_FUNCTION)
        op.execute(POSTGRES_TRIGGER)
    else:
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    if _postgres():
        op.execute("DROP TRIGGER customers_phone_timezone_follows_phone ON customers")
        op.execute("DROP FUNCTION customers_phone_timezone_follows_phone()")
    else:
        op.execute("DROP TRIGGER customers_phone_timezone_follows_phone")
    # Not batch mode on SQLite: it would copy and drop the table, and with foreign keys on, the
    # drop would delete the rows that reference customers (ON DELETE CASCADE).
    op.drop_column("customers", "phone_timezone")


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"
