"""The metrics projection stores every point exactly (names with any characters, any finite double) and reads
it back whole or downsampled, on PostgreSQL (COPY) and SQLite alike."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from runyard.server.domain import events as ev
from runyard.server.projections import schema
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.queries.resources import Queries
from runyard.server.store import EventStore, NewEvent
from runyard.v1 import common_pb2, events_pb2

pytestmark = pytest.mark.integration

NAMES = ["val_accuracy", "loss/train", "tab\there", "back\\slash", "line\nbreak\r", "ünïcode ✓", "comma,quote\"'"]
VALUES = [0.1, -1.0, 1e-300, 1.7976931348623157e308, -2.5e-8, 1 / 3, 123456789.123456789]


def append(store: EventStore, run_id: str, points: list[common_pb2.MetricPoint]) -> None:
    msg = events_pb2.RunMetricsReported(run_id=run_id, attempt=1, points=points)
    type_, data = ev.encode(msg)
    store.append(
        ev.run_metrics_stream(run_id),
        [NewEvent(type=type_, data=data, event_id=uuid.uuid4(), correlation_id="exp-1")],
    )


def test_points_read_back_exactly_then_downsampled(store: EventStore) -> None:
    sent = [
        common_pb2.MetricPoint(
            name=name, step=2**62 + i, value=value, time_us=1_700_000_000_000_000 + i, source="jsonl"
        )
        for i, (name, value) in enumerate((n, v) for n in NAMES for v in VALUES)
    ]
    append(store, "run-1", sent[:20])
    append(store, "run-1", sent[20:])
    long = [common_pb2.MetricPoint(name="long", step=s, value=float(s % 97), source="stdout") for s in range(5000)]
    append(store, "run-1", long)
    append(store, "run-2", [common_pb2.MetricPoint(name="other", step=1, value=1.0)])
    ProjectionRunner(store).catch_up()
    queries = Queries(store.read_engine)

    points, counts = queries.metric_history("run-1")
    assert points == sent + long  # logged order, every field as sent
    assert counts == {**{n: len(VALUES) for n in NAMES}, "long": 5000}

    points, counts = queries.metric_history("run-1", ["long", "tab\there"], max_points=50)
    assert counts == {"long": 5000, "tab\there": len(VALUES)}
    assert [p for p in points if p.name == "tab\there"] == [p for p in sent if p.name == "tab\there"]
    kept = [p for p in points if p.name == "long"]
    assert len(kept) <= 50
    assert {p.step for p in kept} >= {0, 4999} and {p.value for p in kept} >= {0.0, 96.0}


def test_a_whole_history_comes_from_the_serialized_batches_exactly_as_the_rows_store_it(store: EventStore) -> None:
    clean = [
        common_pb2.MetricPoint(name="loss", step=s, value=1 / (s + 1), time_us=s, source="stdout") for s in range(3)
    ]
    # A batch the projector changes: a NaN has no row, a name with NUL and a source wider than its column are fitted.
    changed = [
        common_pb2.MetricPoint(name="acc", step=1, value=float("nan"), source="stdout"),
        common_pb2.MetricPoint(name="bad\x00name", step=2, value=2.0, source="s" * 40),
        common_pb2.MetricPoint(name="acc", step=3, value=0.5, source="jsonl"),
    ]
    append(store, "run-b", clean)
    append(store, "run-b", changed)
    append(store, "run-b", [common_pb2.MetricPoint(name="acc", step=4, value=float("inf"))])  # no kept point
    ProjectionRunner(store).catch_up()
    queries = Queries(store.read_engine)

    with store.read_engine.connect() as conn:
        stored = conn.execute(
            select(func.count()).select_from(schema.metric_batches).where(schema.metric_batches.c.run_id == "run-b")
        ).scalar_one()
    assert stored == 2  # one per event that kept a point
    whole = queries.metric_history("run-b")
    names = sorted(whole[1])
    # The rows' path (a names filter reads metric_points) gives the same points and counts.
    assert whole == queries.metric_history("run-b", names)
    assert len(whole[0]) == 5 and whole[0][:3] == clean
    assert whole[1]["acc"] == 1 and "bad\x00name" not in whole[1]
    # More points than `max_points` for some metric: downsampled from the rows; within it: the batches.
    assert queries.metric_history("run-b", max_points=2)[1] == whole[1]
    assert queries.metric_history("run-b", max_points=3) == whole
