"""Preemption: runs keep who preempted them and whether they may be; accounts keep their preemption policy.

runs: `not_preemptible` (from the spec at RunCreated), `assigned_position` (log position of the current
attempt's RunAssigned: the youngest run is preempted first), `preempt_requested` (the current attempt is
being stopped for another run), `preempted_by` and `preempt_rule` (the latest preemption, for `show`).
accounts: `preemptible` (AccountPreemptionSet; true unless an admin said otherwise).
Rows already there get the defaults, which is what their events say: those fields did not exist yet.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("not_preemptible", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("assigned_position", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("preempt_requested", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("preempted_by", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("preempt_rule", sa.String(32), nullable=False, server_default=""))
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("preemptible", sa.Boolean, nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("preemptible")
    with op.batch_alter_table("runs") as batch:
        for name in ("preempt_rule", "preempted_by", "preempt_requested", "assigned_position", "not_preemptible"):
            batch.drop_column(name)
