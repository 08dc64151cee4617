"""Fixtures of the client tests: sample resources served by the in-process fake API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf import struct_pb2

from runyard.v1 import common_pb2, resources_pb2, watch_pb2
from tests.unit.client.fake_server import FakeServer, State

RS = common_pb2.RunState
ES = resources_pb2.ExperimentState

MANIFEST = """\
name: digits-mlp
framework: {name: pytorch, version: "2.13"}
command: python train.py --lr ${lr}
hyperparameters:
  lr: {type: categorical, values: [0.01, 0.1]}
search: {method: grid, metric: val_accuracy, goal: maximize}
"""


def sample_run(run_id: str, index: int, state: int, lr: float, accuracy: float | None) -> resources_pb2.Run:
    run = resources_pb2.Run(
        id=run_id, experiment_id="exp-1", account_id="default", index=index, state=state,  # type: ignore[arg-type]
        attempt=1, agent_id="agent-1", command=f"python train.py --lr {lr}",
        results_uri=f"s3://results/digits/{run_id}",
    )  # fmt: skip
    run.hyperparameters["lr"].CopyFrom(struct_pb2.Value(number_value=lr))
    if accuracy is not None:
        run.latest_metrics["val_accuracy"] = accuracy
        # The server's leaderboard fields: here the best value is also the last, at step 2.
        run.best_metric, run.best_step = accuracy, 2
    run.created_at.FromSeconds(1_700_000_000)
    return run


def status(cursor: int, state: int, final: bool = False, **kw: object) -> watch_pb2.RunUpdate:
    update = watch_pb2.RunUpdate(cursor=f"p{cursor}", run_id="run-a")
    update.time.FromSeconds(1_700_000_000 + cursor)
    update.status.CopyFrom(watch_pb2.RunStatusChange(state=state, final=final, **kw))  # type: ignore[arg-type]
    return update


def sample_state() -> State:
    run_a = sample_run("run-a", 0, RS.RUN_STATE_COMPLETED, 0.01, 0.93)
    run_b = sample_run("run-b", 1, RS.RUN_STATE_FAILED, 0.1, None)
    experiment = resources_pb2.Experiment(
        id="exp-1", name="digits-mlp", account_id="default", state=ES.EXPERIMENT_STATE_FAILED,
        manifest_yaml=MANIFEST, code_uri="s3://runyard/code/abc.tar.gz", run_count=2,
        runs_by_state={"RUN_STATE_COMPLETED": 1, "RUN_STATE_FAILED": 1}, runs=[run_a, run_b],
    )  # fmt: skip
    logs = watch_pb2.RunUpdate(cursor="p4", run_id="run-a")
    logs.logs.lines.add(stream=common_pb2.LOG_STREAM_STDOUT, text="epoch 1 [ok]", time_us=1_700_000_004_000_000)
    metrics = watch_pb2.RunUpdate(cursor="p5", run_id="run-a")
    metrics.metrics.points.add(name="val_accuracy", step=1, value=0.93, source="stdout")
    updates = [
        status(1, RS.RUN_STATE_QUEUED),
        status(2, RS.RUN_STATE_ASSIGNED, attempt=1, agent_id="agent-1"),
        status(3, RS.RUN_STATE_RUNNING, attempt=1),
        logs,
        metrics,
        status(6, RS.RUN_STATE_COMPLETED, final=True, attempt=1),
    ]
    points = [
        common_pb2.MetricPoint(name="val_accuracy", step=1, value=0.90, source="stdout"),
        common_pb2.MetricPoint(name="val_accuracy", step=2, value=0.93, source="stdout"),
        common_pb2.MetricPoint(name="train_loss", step=2, value=0.25, source="jsonl"),
    ]
    lines = [common_pb2.LogLine(stream=common_pb2.LOG_STREAM_STDOUT, text=f"line {i}", time_us=i) for i in range(5)]
    return State(
        experiments={"exp-1": experiment},
        runs={"run-a": run_a, "run-b": run_b},
        updates=updates,
        points=points,
        log_lines=lines,
    )


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer(sample_state()).start()
    try:
        yield server
    finally:
        server.stop()
