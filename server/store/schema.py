"""The event log table as SQLAlchemy Core sees it.

The DDL lives in the Alembic revision 0001 (never `create_all`); this Table
describes the same columns for statements. On SQLite `position` is declared
INTEGER so that it becomes the rowid: the log is then stored in position
order and a replay is a sequential scan.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    Uuid,
)

metadata = MetaData()

NOTIFY_CHANNEL = "runyard_event_log"
"""PostgreSQL channel that runyard_append NOTIFYs, at commit, with the new log head."""

event_log = Table(
    "event_log",
    metadata,
    Column("position", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False),
    Column("stream_id", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("event_id", Uuid(), nullable=False),
    Column("type", String(200), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("correlation_id", String(200), nullable=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("stream_id", "version", name="uq_event_log_stream_version"),
    UniqueConstraint("event_id", name="uq_event_log_event_id"),
    Index("ix_event_log_correlation_position", "correlation_id", "position"),
    Index("ix_event_log_stream_position", "stream_id", "position"),
)
