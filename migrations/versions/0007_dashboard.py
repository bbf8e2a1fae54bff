"""dashboard: indexes for the latest answers and the report cache's data version

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

- ``ix_surveys_answered_at``: the dashboard lists the latest answers first, a page at a time.
- ``ix_surveys_state_changed_at``: the report cache's data version reads
  ``max(state_changed_at)`` on every page load; with the index that is one index probe.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_surveys_answered_at", "surveys", ["answered_at"])
    op.create_index("ix_surveys_state_changed_at", "surveys", ["state_changed_at"])


def downgrade() -> None:
    op.drop_index("ix_surveys_state_changed_at", table_name="surveys")
    op.drop_index("ix_surveys_answered_at", table_name="surveys")
