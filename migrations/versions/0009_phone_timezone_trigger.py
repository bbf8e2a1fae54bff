"""customers.phone_timezone follows the number: emptied when an UPDATE changes only the number

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

Code that predates the column (the previous release, still running during a deploy or after a
rollback) changes or erases numbers without knowing the zone; the old zone would stay, surveys
would be planned in it, and an erased person's zone would survive. The trigger sets the zone to
NULL when an UPDATE changes ``phone`` without also changing ``phone_timezone``; NULL costs only a
parse of the number at the next plan. The same happens when a new number gives the same zone as
the old one, and when a writer sets the zone and the number in two separate UPDATEs (none does).

On SQLite the trigger runs after the statement: an ``UPDATE ... RETURNING phone_timezone`` there
returns the zone before the trigger emptied it (no statement of the code base does this).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POSTGRES_FUNCTION = """
CREATE OR REPLACE FUNCTION customers_phone_timezone_follows_phone() RETURNS trigger
LANGUAGE plpgsql AS $$
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
    if _postgres():
        op.execute("DROP TRIGGER IF EXISTS customers_phone_timezone_follows_phone ON customers")
        op.execute(POSTGRES_FUNCTION)
        op.execute(POSTGRES_TRIGGER)
    else:
        op.execute("DROP TRIGGER IF EXISTS customers_phone_timezone_follows_phone")
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    if _postgres():
        op.execute("DROP TRIGGER IF EXISTS customers_phone_timezone_follows_phone ON customers")
        op.execute("DROP FUNCTION IF EXISTS customers_phone_timezone_follows_phone()")
    else:
        op.execute("DROP TRIGGER IF EXISTS customers_phone_timezone_follows_phone")


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"
