"""Alembic environment for Runyard: generic, every table comes from a revision.

Run from code through `runyard.server.store.migrate(url)` (which hands over a
connection already in a transaction), or from the command line with
`alembic -c migrations/alembic.ini upgrade head` and RUNYARD_DATABASE_URL set.
No target metadata: revisions are written by hand, the schema is what they say.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, text

from runyard.server.store.engine import create_store_engine

# Held for the migration transaction so that replicas starting together
# upgrade one after the other; the second then finds nothing to do.
MIGRATION_LOCK_KEY = 7_216_315_099

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("RUNYARD_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set sqlalchemy.url or RUNYARD_DATABASE_URL")
    return url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,
        transactional_ddl=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


def run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    engine = create_store_engine(_url(), pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


def run_offline() -> None:
    context.configure(url=_url(), literal_binds=True, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
