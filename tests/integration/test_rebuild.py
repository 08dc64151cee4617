"""A read-model rebuild from position 0 gives tables identical to the live ones."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from runyard.server.domain import events as ev
from runyard.server.projections import schema
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.store import EventStore, NewEvent
from runyard.v1 import common_pb2, events_pb2
from tests.support.synthetic import fill

pytestmark = pytest.mark.integration


def dump(store: EventStore) -> dict[str, list[tuple[object, ...]]]:
    with store.engine.connect() as conn:
        return {
            table.name: [tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key.columns))]
            for table in schema.PROJECTION_TABLES
        }


def test_rebuild_from_zero_reproduces_every_row(store: EventStore) -> None:
    appended = fill(store, runs=200)
    runner = ProjectionRunner(store, batch_size=300)
    # Live: applied in small batches as they would arrive.
    assert runner.catch_up() == appended
    live = dump(store)
    assert len(live["runs"]) == 200 and len(live["experiments"]) == 20
    # Half the experiments were searched: runs added one by one, three of each stopped early.
    with store.engine.connect() as conn:
        e, r = schema.experiments.c, schema.runs.c
        searched = conn.execute(select(e.run_count, e.searching, e.end_reason).where(e.end_reason != "")).all()
        stopped = conn.execute(select(r.id).where(r.state == common_pb2.RUN_STATE_STOPPED_EARLY)).all()
    assert sorted(set(searched)) == [(10, False, "every trial ended")] and len(searched) == 10
    assert len(stopped) == 30
    replayed, _seconds = runner.rebuild()
    assert replayed == appended
    assert dump(store) == live
    # A second runner (another replica) on the same database finds nothing left to apply.
    assert ProjectionRunner(store).catch_up() == 0


def test_the_read_models_pass_log_lines_they_never_read(store: EventStore) -> None:
    """The runner reads only the types its read models read, yet its position reaches the head."""
    appended = fill(store, runs=10)
    run_id = "run-b000000x00"
    type_, data = ev.encode(events_pb2.RunLogged(run_id=run_id, attempt=1, lines=[common_pb2.LogLine(text="x")]))
    store.append(ev.run_logs_stream(run_id), [NewEvent(type_, data, uuid.uuid4()) for _ in range(7)])
    runner = ProjectionRunner(store, batch_size=4)
    assert runner.catch_up() == appended + 7
    assert runner.position == store.head_position() == appended + 7
    assert runner.wait_for(store.head_position(), timeout=0.1)
    assert ProjectionRunner(store, batch_size=4).catch_up() == 0


def test_a_rebuild_beside_another_replicas_runner_gives_the_same_tables(store: EventStore) -> None:
    """Another replica's runner keeps applying while one rebuilds: each window is applied once, by one of them."""
    fill(store, runs=300)
    runner = ProjectionRunner(store, batch_size=500)
    runner.catch_up()
    live = dump(store)
    other = ProjectionRunner(store, batch_size=97)
    other.start()
    try:
        for _ in range(3):
            replayed, _seconds = runner.rebuild()
            assert 0 < replayed <= store.head_position()
    finally:
        other.stop()
    runner.catch_up()
    assert dump(store) == live
