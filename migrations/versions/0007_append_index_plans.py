"""runyard_append plans its lookups with index scans only, whatever size the log had when it first ran.

PL/pgSQL caches each statement's plan per session. A pooled connection that
first appended to an empty or small log (a new install, a test, a benchmark)
kept plans that scan the whole table for the event-id, stream-version and
head lookups, and each append then read every page of the log: 1.3 ms of
execution at 3,000 events, 9.3 ms at 15,000, 250 more buffers per 3,000
events (until autovacuum's ANALYZE happened to invalidate the plans). Every
lookup has an index (uq_event_log_event_id, uq_event_log_stream_version, the
primary key), so with sequential scans off for the function's own statements
the plans stay index scans at any size: 21 buffers and about 0.3 ms at 0,
3,000 or 15,000 events. Nothing outside the function changes.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_SIGNATURE = "runyard_append(text, integer, uuid[], text[], bytea[], text[], timestamptz)"


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"ALTER FUNCTION {_SIGNATURE} SET enable_seqscan = off")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"ALTER FUNCTION {_SIGNATURE} RESET enable_seqscan")
