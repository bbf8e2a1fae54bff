"""scheduler indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

Each scheduler step finds its rows by a range scan of a partial index, so that a pass costs what
it acts on, not what is stored:

- ``ix_surveys_pending_state_due`` (state, due_at) over pending rows: the due ``scheduled`` rows
  in due order (the claim) and the ``waiting_anchor`` rows past their deadline;
- ``ix_surveys_pending_version`` (config_version) over pending rows: the rows planned under
  another config version, read as two ranges around the current one;
- ``ix_surveys_queued_lease`` (queued_at) over ``queued`` rows: messages presumed lost;
- ``ix_surveys_open_reminder`` (next_reminder_at) and ``ix_surveys_closing`` (closes_at) over
  open invitations (and answered ones for the window): due reminders and closing windows.

The predicates are the ones ``models.surveys`` declares, word for word.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = "state IN ('scheduled', 'waiting_anchor')"
QUEUED = "state IN ('queued')"
OPEN = "state IN ('delivered', 'sent')"
CLOSING = "state IN ('answered', 'delivered', 'sent')"

INDEXES: list[tuple[str, list[str], str]] = [
    ("ix_surveys_pending_state_due", ["state", "due_at"], PENDING),
    ("ix_surveys_pending_version", ["config_version"], PENDING),
    ("ix_surveys_queued_lease", ["queued_at"], QUEUED),
    ("ix_surveys_open_reminder", ["next_reminder_at"], OPEN),
    ("ix_surveys_closing", ["closes_at"], CLOSING),
]


def upgrade() -> None:
    with op.batch_alter_table("surveys", schema=None) as batch_op:
        for name, columns, where in INDEXES:
            batch_op.create_index(
                name,
                columns,
                unique=False,
                postgresql_where=sa.text(where),
                sqlite_where=sa.text(where),
            )


def downgrade() -> None:
    with op.batch_alter_table("surveys", schema=None) as batch_op:
        for name, _columns, _where in reversed(INDEXES):
            batch_op.drop_index(name)
