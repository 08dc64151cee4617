"""Bringing a database to the newest schema with Alembic, from code.

The Alembic scripts ship inside the package (`runyard.migrations`), so this
works from an installed wheel as well as from a checkout: the script location
is the package's folder, not a path relative to the working directory.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.engine import URL

import runyard.migrations

from .engine import create_store_engine, read_only

_ALEMBIC_IN_USE = threading.Lock()


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic Config pointing at the packaged scripts."""
    config = Config()
    config.set_main_option("script_location", str(Path(runyard.migrations.__file__).parent))
    if url is not None:
        rendered = url if isinstance(url, str) else url.render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def migrate_engine(engine: Engine, revision: str = "head") -> None:
    """Upgrade through `engine` in one transaction.

    Concurrent upgrades (two replicas starting at once) are safe: env.py
    takes an advisory lock on PostgreSQL, and on SQLite the transaction starts
    with BEGIN IMMEDIATE; the second one then finds nothing left to do.
    Within one process they also take turns, because Alembic's `context` and
    `op` are process-wide.
    """
    config = alembic_config()
    with _ALEMBIC_IN_USE, engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def migrate(url: str | URL, revision: str = "head") -> None:
    """`alembic upgrade head` for the database at `url`."""
    engine = create_store_engine(url, pool_size=1, max_overflow=0)
    try:
        migrate_engine(engine, revision)
    finally:
        engine.dispose()


def current_revisions(engine: Engine) -> tuple[str, ...]:
    """The revisions the database is at (empty when it was never migrated)."""
    with read_only(engine).connect() as conn:
        return tuple(MigrationContext.configure(conn).get_current_heads())


def head_revisions() -> tuple[str, ...]:
    """The newest revisions the packaged scripts know."""
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())
