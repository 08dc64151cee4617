"""Projection tables (read models) rebuilt from the event log.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    checkpoints = op.create_table(
        "projection_checkpoints",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    # Present from the start, so concurrent replicas only ever lock it.
    op.bulk_insert(checkpoints, [{"name": "read_models", "position": 0}])
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("manifest_yaml", sa.Text, nullable=False),
        sa.Column("code_uri", sa.Text, nullable=False),
        sa.Column("run_count", sa.Integer, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        _ts("created_at"),
        sa.Column("position", sa.BigInteger, nullable=False, unique=True),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("experiment_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("gpu_ids", sa.Text, nullable=False),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("hyperparameters", sa.Text, nullable=False),
        sa.Column("results_uri", sa.Text, nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("failure_reason", sa.Integer, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("latest_metrics", sa.Text, nullable=False),
        _ts("created_at"),
        _ts("assigned_at", True),
        _ts("started_at", True),
        _ts("ended_at", True),
        sa.Column("queued_position", sa.BigInteger, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False, unique=True),
    )
    op.create_index("ix_runs_experiment_id", "runs", ["experiment_id"])
    op.create_index("ix_runs_state", "runs", ["state"])
    op.create_table(
        "agents",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("slots", sa.Integer, nullable=False),
        sa.Column("gpu_ids", sa.Text, nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("frameworks", sa.Text, nullable=False),
        sa.Column("lost", sa.Boolean, nullable=False),
        _ts("registered_at"),
    )
    op.create_table(
        "metric_points",
        sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
    )
    op.create_index("ix_metric_points_run", "metric_points", ["run_id", "name", "step"])


def downgrade() -> None:
    for table in ("metric_points", "agents", "runs", "experiments", "projection_checkpoints"):
        op.drop_table(table)
