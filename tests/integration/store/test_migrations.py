"""The schema comes from Alembic only, and replicas starting together may all migrate."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from runyard.server.store import EventStore, create_store_engine, migrate
from runyard.server.store.migrate import alembic_config, current_revisions, head_revisions
from runyard.server.store.schema import event_log
from tests.support.databases import fresh_postgres_database, sqlite_url

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    with fresh_postgres_database() as url:
        yield url


def test_replica_processes_starting_together_on_a_new_database_all_succeed(empty_database: str) -> None:
    """Each replica migrates at start; the database makes them take turns (advisory lock, BEGIN IMMEDIATE)."""
    script = (
        "import sys\n"
        "from runyard.server.store import EventStore\n"
        "store = EventStore.open(sys.argv[1])\n"
        "print(store.head_position())\n"
        "store.close()\n"
    )
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", script, empty_database],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [(*p.communicate(timeout=60), p.returncode) for p in replicas]
    assert [(code, out.strip()) for out, _, code in outcomes] == [(0, "0")] * 4, outcomes
    engine = create_store_engine(empty_database)
    try:
        assert current_revisions(engine) == head_revisions()
    finally:
        engine.dispose()


def test_threads_opening_a_new_database_together_all_succeed(empty_database: str) -> None:
    opened: list[EventStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start_replica() -> None:
        barrier.wait()
        try:
            opened.append(EventStore.open(empty_database))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start_replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert len(opened) == 4
        assert current_revisions(opened[0].engine) == head_revisions()
    finally:
        for store in opened:
            store.close()


def test_open_without_migrating_refuses_an_empty_database(empty_database: str) -> None:
    with pytest.raises(RuntimeError, match="no event log"):
        EventStore.open(empty_database, migrate=False)
    migrate(empty_database)
    EventStore.open(empty_database, migrate=False).close()


def test_the_table_the_code_uses_is_the_table_the_migration_made(empty_database: str) -> None:
    migrate(empty_database)
    engine = create_store_engine(empty_database)
    try:
        with engine.connect() as conn:
            found = inspect(conn)
            columns = {c["name"]: c for c in found.get_columns("event_log")}
            indexes = {i["name"] for i in found.get_indexes("event_log")}
            uniques = {tuple(u["column_names"]) for u in found.get_unique_constraints("event_log")}
            pk = found.get_pk_constraint("event_log")["constrained_columns"]
    finally:
        engine.dispose()
    assert list(columns) == [c.name for c in event_log.columns]
    assert {name for name, c in columns.items() if c["nullable"]} == {"correlation_id"}
    assert pk == ["position"]
    assert {("stream_id", "version"), ("event_id",)} <= uniques
    assert {"ix_event_log_correlation_position", "ix_event_log_stream_position"} <= indexes


def test_the_event_log_revision_downgrades_and_upgrades_again(empty_database: str) -> None:
    migrate(empty_database)
    config = alembic_config(empty_database)
    command.downgrade(config, "base")
    engine = create_store_engine(empty_database)
    try:
        assert current_revisions(engine) == ()
        with engine.connect() as conn:
            assert not inspect(conn).has_table("event_log")
    finally:
        engine.dispose()
    store = EventStore.open(empty_database)
    try:
        assert store.head_position() == 0
    finally:
        store.close()


def test_metric_batches_are_filled_in_from_the_points_stored_before_them(empty_database: str) -> None:
    from sqlalchemy import insert

    from runyard.server.projections import schema
    from runyard.server.queries.resources import Queries

    config = alembic_config(empty_database)
    command.upgrade(config, "0007")
    engine = create_store_engine(empty_database)
    try:
        rows = [
            {"position": pos, "idx": idx, "run_id": run, "attempt": 1, "name": name, "step": pos * 10 + idx}
            | {"value": pos + idx / 10, "time_us": pos, "source": "stdout"}
            for pos, run in ((3, "run-a"), (5, "run-b"), (7, "run-a"))
            for idx, name in enumerate(("loss", "acc", "loss"))
        ]
        # Five events of 4,999 points: the migration's pages of 20,000 rows end inside the fifth.
        long = [
            {"position": 10 + pos, "idx": idx, "run_id": "run-long", "attempt": 1, "name": "loss", "step": idx}
            | {"value": float(idx), "time_us": idx, "source": "stdout"}
            for pos in range(5)
            for idx in range(4999)
        ]
        with engine.begin() as conn:
            conn.execute(insert(schema.metric_points), rows + long)
        command.upgrade(config, "head")
        queries = Queries(engine)
        whole = queries.metric_history("run-a")
        with engine.connect() as conn:
            positions = conn.execute(schema.metric_batches.select().order_by("position")).all()
        assert [(r.position, r.run_id) for r in positions][:3] == [(3, "run-a"), (5, "run-b"), (7, "run-a")]
        assert [(r.position, r.run_id) for r in positions][3:] == [(10 + p, "run-long") for p in range(5)]
        points, counts = queries.metric_history("run-long")
        assert counts == {"loss": 5 * 4999} and [p.step for p in points] == list(range(4999)) * 5
        assert (points, counts) == queries.metric_history("run-long", ["loss"])
        assert whole == queries.metric_history("run-a", ["acc", "loss"])  # as the rows give them
        assert [(p.name, p.step) for p in whole[0]] == [(r["name"], r["step"]) for r in rows if r["run_id"] == "run-a"]
        assert whole[1] == {"loss": 4, "acc": 2}
    finally:
        engine.dispose()
