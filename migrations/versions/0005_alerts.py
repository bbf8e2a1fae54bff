"""detractor alerts

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

The outbox of detractor alerts (``models.alerts``): one row per survey and target, unique on
both, with a partial index on the due time of the rows still to deliver.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = "state IN ('pending', 'queued', 'delivering')"


def upgrade() -> None:
    op.create_table(
        "detractor_alerts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "survey_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("target", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("created_at", models.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("due_at", models.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("queued_at", models.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("claimed_at", models.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("finished_at", models.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=120), nullable=True),
        sa.ForeignKeyConstraint(
            ["survey_id"],
            ["surveys.id"],
            name=op.f("fk_detractor_alerts_survey_id_surveys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_detractor_alerts")),
        sa.UniqueConstraint("survey_id", "target", name="uq_detractor_alerts_survey_id_target"),
    )
    with op.batch_alter_table("detractor_alerts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_detractor_alerts_open",
            ["due_at"],
            unique=False,
            postgresql_where=sa.text(_OPEN),
            sqlite_where=sa.text(_OPEN),
        )


def downgrade() -> None:
    with op.batch_alter_table("detractor_alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_detractor_alerts_open")
    op.drop_table("detractor_alerts")
