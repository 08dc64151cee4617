"""Searched experiments: whether the searcher may still add runs, and why the search ended.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("searching", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("end_reason", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("end_reason")
        batch.drop_column("searching")
