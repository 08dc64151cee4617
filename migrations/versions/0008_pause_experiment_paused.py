"""Experiments keep whether they are paused (ExperimentPaused, not resumed since), so list/show say PAUSED.

No experiment was paused before this revision (the events are new), so every
existing row is not paused: the default.

Revision ID: 0008_pause
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_pause"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("paused")
