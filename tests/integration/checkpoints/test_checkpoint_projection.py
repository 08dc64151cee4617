"""Checkpoints and resumed attempts in the read models, on PostgreSQL and SQLite.

A resumed attempt reports again the steps between its checkpoint and where
its predecessor was lost: those points are not recorded a second time (the
first value stands), however the events fall into projection batches; the
run's checkpoints and the checkpoint each attempt resumed from are listed,
and a rebuild gives the same rows.
"""

from __future__ import annotations

import uuid

import pytest
from google.protobuf.message import Message
from sqlalchemy import select

from runyard.server.api.updates import UpdateBuilder
from runyard.server.domain import events as ev
from runyard.server.projections import schema
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.queries.resources import Queries
from runyard.server.queries.scheduling import SchedulingReads
from runyard.server.store import EventStore, NewEvent
from runyard.v1 import common_pb2, events_pb2

pytestmark = pytest.mark.integration

RUN = "run-ck"


def _append(store: EventStore, stream: str, msg: Message) -> None:
    type_, data = ev.encode(msg)
    store.append(stream, [NewEvent(type=type_, data=data, event_id=uuid.uuid4(), correlation_id="exp-ck")])


def _points(attempt: int, steps: range, offset: float) -> events_pb2.RunMetricsReported:
    pts = [
        common_pb2.MetricPoint(name=name, step=s, value=offset + s + (0.5 if name == "acc" else 0.0))
        for s in steps
        for name in ("loss", "acc")
    ]
    return events_pb2.RunMetricsReported(run_id=RUN, attempt=attempt, points=pts)


def _checkpoint(attempt: int, seq: int, step: int) -> common_pb2.Checkpoint:
    return common_pb2.Checkpoint(
        checkpoint_id=f"{attempt}-{seq}",
        run_id=RUN,
        attempt=attempt,
        step=step,
        size_bytes=1000 * step,
        files=2,
        manifest_uri=f"s3://b/r/checkpoints/{attempt}-{seq}.json",
        manifest_sha256="ab" * 32,
        time_us=1_700_000_000_000_000 + step,
    )


def _write_history(store: EventStore) -> None:
    run, metrics = ev.run_stream(RUN), ev.run_metrics_stream(RUN)
    _append(
        store,
        run,
        events_pb2.RunCreated(
            run_id=RUN, experiment_id="exp-ck", account_id="acct", index=0, spec=common_pb2.RunSpec()
        ),
    )
    _append(store, run, events_pb2.RunAssigned(attempt=1, agent_id="agent-a"))
    _append(store, metrics, _points(1, range(1, 4), 0.0))
    ck = _checkpoint(1, 1, 3)
    _append(store, run, events_pb2.RunCheckpointed(attempt=1, checkpoint=ck))
    _append(store, metrics, _points(1, range(4, 6), 0.0))  # steps 4, 5: lost with agent-a
    _append(store, run, events_pb2.RunRequeued(attempt=1, reason=common_pb2.FAILURE_REASON_AGENT_LOST))
    _append(store, run, events_pb2.RunAssigned(attempt=2, agent_id="agent-b", resume_from=ck))
    _append(store, metrics, _points(2, range(4, 7), 100.0))  # 4, 5 again (repeats), then 6
    _append(store, run, events_pb2.RunCheckpointed(attempt=2, checkpoint=_checkpoint(2, 1, 6)))
    _append(store, metrics, _points(2, range(7, 9), 100.0))


def _dump(store: EventStore) -> dict[str, list[tuple[object, ...]]]:
    tables = (schema.metric_points, schema.run_checkpoints, schema.run_attempts, schema.runs)
    with store.engine.connect() as conn:
        return {t.name: [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns))] for t in tables}


@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_a_resumed_attempts_repeats_are_recorded_once_and_checkpoints_listed(
    store: EventStore, batch_size: int
) -> None:
    _write_history(store)
    runner = ProjectionRunner(store, batch_size=batch_size)
    runner.catch_up()
    queries = Queries(store.read_engine)

    points, counts = queries.metric_history(RUN)
    assert counts == {"loss": 8, "acc": 8}
    loss = [(p.step, p.value) for p in points if p.name == "loss"]
    # Steps 1-5 keep attempt 1's values (the first value stands); 6-8 are attempt 2's.
    assert loss == [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 9)]
    run = queries.get_run(RUN)
    assert run is not None and run.latest_metrics["loss"] == 108.0

    assert [(c.checkpoint_id, c.step, c.size_bytes) for c in queries.checkpoints(RUN)] == [
        ("1-1", 3, 3000),
        ("2-1", 6, 6000),
    ]
    latest = queries.latest_checkpoint(RUN)
    assert latest is not None and latest.checkpoint_id == "2-1"
    attempts = queries.attempts(RUN)
    assert [(a.attempt, a.agent_id, a.resumed_from.checkpoint_id, a.ended) for a in attempts] == [
        (1, "agent-a", "", "re-queued: agent_lost"),
        (2, "agent-b", "1-1", ""),
    ]
    assert not attempts[0].HasField("resumed_from") and attempts[1].resumed_from.step == 3

    # What a re-sent assignment (a new scheduler leader, a lost dispatch) resumes from: the attempt's own record.
    reads = SchedulingReads(store.read_engine)
    assert reads.resume_points([(RUN, 1)]) == {}
    assert reads.resume_points([(RUN, 2)])[RUN].checkpoint_id == "1-1"

    live = _dump(store)
    runner.rebuild()
    assert _dump(store) == live


def test_watch_run_streams_each_step_once_from_the_start_and_from_a_cursor(store: EventStore) -> None:
    _write_history(store)
    ProjectionRunner(store).catch_up()
    streams = [ev.run_stream(RUN), ev.run_metrics_stream(RUN)]
    events = store.read_all(0, 1000, stream_ids=streams)

    def streamed(builder: UpdateBuilder, after: int) -> list[tuple[str, int, float]]:
        out: list[tuple[str, int, float]] = []
        for e in events:
            if e.position <= after:
                continue
            update = builder.build(e)
            if update is not None and update.HasField("metrics"):
                out.extend((p.name, p.step, p.value) for p in update.metrics.points)
        return out

    whole = streamed(UpdateBuilder(), 0)
    assert sorted((n, s) for n, s, _ in whole) == sorted((n, s) for n in ("loss", "acc") for s in range(1, 9))
    assert ("loss", 4, 4.0) in whole and ("loss", 4, 104.0) not in whole

    # Resumed right after attempt 1's last points: seeded from the read models, attempt 2's repeats still dropped.
    requeued = next(e for e in events if e.type == "runyard.v1.RunRequeued").position
    builder = UpdateBuilder()
    builder.repeats.seed(RUN, Queries(store.read_engine).metric_steps(RUN, requeued))
    tail = streamed(builder, requeued)
    assert [(n, s) for n, s, _ in tail if n == "loss"] == [("loss", 6), ("loss", 7), ("loss", 8)]
