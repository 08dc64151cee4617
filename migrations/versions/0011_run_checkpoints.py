"""A run's checkpoints and attempts: what `runyard show` lists and what a re-sent assignment resumes from.

run_checkpoints holds one row per RunCheckpointed (the newest by position is
the run's latest); run_attempts one row per RunAssigned with the checkpoint
that attempt resumed from. Both are projections, rebuilt from the log.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_checkpoints",
        sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("checkpoint_id", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("checkpoint", sa.LargeBinary, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_run_checkpoints_run_id", "run_checkpoints", ["run_id"])
    op.create_table(
        "run_attempts",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("resumed_from", sa.LargeBinary, nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_run_attempts_run_id", "run_attempts", ["run_id"])


def downgrade() -> None:
    op.drop_table("run_attempts")
    op.drop_table("run_checkpoints")
