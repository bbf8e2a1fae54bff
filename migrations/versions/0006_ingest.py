"""set-based ingest: no schema change

Set-based ingest needed no new column or index (it reads by the existing unique keys). The
revision stays so that the chain every database has recorded is unchanged.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from collections.abc import Sequence

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
