"""Accounts, API keys, GPU inventory, priorities, drain and the usage projection.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("gpus", sa.Text, nullable=False, server_default="[]"))
        batch.add_column(sa.Column("draining", sa.Boolean, nullable=False, server_default=sa.false()))
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("gpus", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("gpu_model", sa.String(64), nullable=False, server_default=""))
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("gpu_quota", sa.Integer, nullable=False),
        sa.Column("max_queued_runs", sa.Integer, nullable=False),
        sa.Column("run_quota", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("role", sa.Integer, nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_api_keys_account_id", "api_keys", ["account_id"])
    op.create_table(
        "attempt_usage",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("experiment_id", sa.String(64), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("gpu_model", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("gpu_seconds", sa.Float, nullable=False),
    )
    op.create_index("ix_attempt_usage_account_id", "attempt_usage", ["account_id"])


def downgrade() -> None:
    for table in ("attempt_usage", "api_keys", "accounts"):
        op.drop_table(table)
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("gpu_model")
        batch.drop_column("gpus")
        batch.drop_column("priority")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("priority")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("draining")
        batch.drop_column("gpus")
