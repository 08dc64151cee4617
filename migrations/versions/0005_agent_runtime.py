"""Agents say how they run commands ("process" or "container"): only a container agent runs a run's own image.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("runtime", sa.String(32), nullable=False, server_default="process"))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("runtime")
