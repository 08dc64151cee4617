"""The event log: one append-only table, ordered by a gap-free global position.

PostgreSQL also gets `runyard_append(...)`: the whole append (lock,
idempotency and version checks, gap-free positions, insert, NOTIFY) in one
round trip; runyard.server.store.transaction implements the same steps in
Python for SQLite. Changing it means a new revision with CREATE OR REPLACE.
It NOTIFYs `runyard_event_log` with the new head; NOTIFY is transactional:
delivered at commit, never for a rolled back append.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# 7216315100 is runyard.server.store.transaction.APPEND_LOCK_KEY. A VOLATILE
# function takes a fresh snapshot per statement (READ COMMITTED), so every read
# after the lock sees all appends committed before it.
_APPEND_FUNCTION = """
CREATE FUNCTION runyard_append(
    p_stream_id text,
    p_expected_version integer,
    p_event_ids uuid[],
    p_types text[],
    p_data bytea[],
    p_correlation_ids text[],
    p_recorded_at timestamptz
) RETURNS TABLE (outcome text, last_position bigint, last_version integer, stored integer)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    batch_size integer := cardinality(p_event_ids);
    n_stored integer;
    stored_position bigint;
    stored_version integer;
    all_in_stream boolean;
    stream_version integer;
    log_head bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7216315100);
    SELECT count(*), max(e.position), max(e.version), coalesce(bool_and(e.stream_id = p_stream_id), true)
      INTO n_stored, stored_position, stored_version, all_in_stream
      FROM event_log e
     WHERE e.event_id = ANY (p_event_ids);
    IF n_stored > 0 THEN
        IF n_stored = batch_size AND all_in_stream THEN
            RETURN QUERY SELECT 'noop'::text, stored_position, stored_version, n_stored;
        ELSIF all_in_stream THEN
            RETURN QUERY SELECT 'duplicate'::text, 0::bigint, 0, n_stored;
        ELSE
            RETURN QUERY SELECT 'duplicate_elsewhere'::text, 0::bigint, 0, n_stored;
        END IF;
        RETURN;
    END IF;
    SELECT coalesce(max(e.version), 0) INTO stream_version FROM event_log e WHERE e.stream_id = p_stream_id;
    IF p_expected_version IS NOT NULL AND p_expected_version <> stream_version THEN
        RETURN QUERY SELECT 'conflict'::text, 0::bigint, stream_version, 0;
        RETURN;
    END IF;
    SELECT coalesce(max(e.position), 0) INTO log_head FROM event_log e;
    INSERT INTO event_log (position, stream_id, version, event_id, type, data, correlation_id, recorded_at)
    SELECT log_head + u.ord, p_stream_id, stream_version + u.ord::integer,
           u.event_id, u.type, u.data, u.correlation_id, p_recorded_at
      FROM unnest(p_event_ids, p_types, p_data, p_correlation_ids)
           WITH ORDINALITY AS u(event_id, type, data, correlation_id, ord);
    PERFORM pg_notify('runyard_event_log', (log_head + batch_size)::text);
    RETURN QUERY SELECT 'appended'::text, log_head + batch_size, stream_version + batch_size, 0;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "event_log",
        # INTEGER on SQLite: the position becomes the rowid, the table is stored in log order.
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("stream_id", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("correlation_id", sa.String(200), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("stream_id", "version", name="uq_event_log_stream_version"),
        sa.UniqueConstraint("event_id", name="uq_event_log_event_id"),
    )
    op.create_index("ix_event_log_correlation_position", "event_log", ["correlation_id", "position"])
    op.create_index("ix_event_log_stream_position", "event_log", ["stream_id", "position"])
    if op.get_context().dialect.name == "postgresql":
        op.execute(_APPEND_FUNCTION)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS runyard_append(text, integer, uuid[], text[], bytea[], text[], timestamptz)"
        )
    op.drop_table("event_log")
