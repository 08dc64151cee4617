"""Experiments keep the objective their runs are ranked by, recorded at submit, so leaderboards parse no YAML.

Rows already there get it the way the leaderboard read it until now: from the
stored manifest, leniently (`search.metric`, `search.goal` defaulting to
maximize), which is also what the upcaster gives their ExperimentCreated on a
rebuild.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from runyard.server.domain.upcasting import legacy_facts

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("objective_metric", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("objective_maximize", sa.Boolean, nullable=False, server_default=sa.true()))
    experiments = sa.table(
        "experiments",
        sa.column("id", sa.String),
        sa.column("manifest_yaml", sa.Text),
        sa.column("objective_metric", sa.Text),
        sa.column("objective_maximize", sa.Boolean),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.select(experiments.c.id, experiments.c.manifest_yaml)).all()
    for experiment_id, manifest_yaml in rows:
        facts = legacy_facts(manifest_yaml)
        if facts.objective_metric:
            conn.execute(
                experiments.update()
                .where(experiments.c.id == experiment_id)
                .values(objective_metric=facts.objective_metric, objective_maximize=facts.objective_maximize)
            )


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("objective_maximize")
        batch.drop_column("objective_metric")
