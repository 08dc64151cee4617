"""Replay rate of a read-model rebuild from position 0, on PostgreSQL and SQLite.

Fills a fresh log with the whole life of many runs (created, assigned,
staging, running, log and metric batches, uploading, completed), then times
`ProjectionRunner.rebuild()`. Prints JSON; the goal is 50,000 events/s or more
on PostgreSQL.

    .venv/bin/python bench/replay.py [--runs 8000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.server.domain import events as ev
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.store import EventStore, NewEvent
from runyard.v1 import common_pb2, events_pb2
from tests.support.services import postgres_database

RUNS_PER_EXPERIMENT = 10


def _new(msg: object, correlation: str) -> NewEvent:
    type_, data = ev.encode(msg)  # type: ignore[arg-type]
    return NewEvent(type=type_, data=data, event_id=uuid.uuid4(), correlation_id=correlation)


def fill(store: EventStore, runs: int) -> int:
    count = 0
    for e in range(runs // RUNS_PER_EXPERIMENT):
        exp_id = f"exp-bench{e:06d}"
        run_ids = [f"run-b{e:06d}x{i:02d}" for i in range(RUNS_PER_EXPERIMENT)]
        with store.transaction() as tx:
            tx.append(
                ev.experiment_stream(exp_id),
                [
                    _new(
                        events_pb2.ExperimentCreated(
                            experiment_id=exp_id,
                            account_id="bench",
                            name="bench",
                            manifest_yaml="name: bench",
                            run_ids=run_ids,
                        ),
                        exp_id,
                    )
                ],
            )
            count += 1
            for i, run_id in enumerate(run_ids):
                spec = common_pb2.RunSpec(command=f"python train.py --lr {i}", results_uri=f"s3://r/{run_id}")
                spec.hyperparameters["lr"].number_value = i / 10
                life = [
                    events_pb2.RunCreated(run_id=run_id, experiment_id=exp_id, account_id="bench", index=i, spec=spec),
                    events_pb2.RunAssigned(attempt=1, agent_id="agent-1"),
                    events_pb2.RunStaging(attempt=1),
                    events_pb2.RunStarted(attempt=1),
                    events_pb2.RunUploading(attempt=1),
                    events_pb2.RunCompleted(attempt=1, results_uri=spec.results_uri),
                ]
                tx.append(ev.run_stream(run_id), [_new(m, exp_id) for m in life])
                logs = [
                    events_pb2.RunLogged(
                        run_id=run_id,
                        attempt=1,
                        lines=[common_pb2.LogLine(stream=common_pb2.LOG_STREAM_STDOUT, text=f"epoch {k}")],
                    )
                    for k in range(2)
                ]
                tx.append(ev.run_logs_stream(run_id), [_new(m, exp_id) for m in logs])
                metrics = [
                    events_pb2.RunMetricsReported(
                        run_id=run_id,
                        attempt=1,
                        points=[
                            common_pb2.MetricPoint(name="val_accuracy", step=k, value=0.5 + k / 10, source="stdout")
                        ],
                    )
                    for k in range(2)
                ]
                tx.append(ev.run_metrics_stream(run_id), [_new(m, exp_id) for m in metrics])
                count += len(life) + len(logs) + len(metrics)
    return count


def measure(url: str, runs: int) -> dict[str, object]:
    store = EventStore.open(url)
    try:
        events = fill(store, runs)
        runner = ProjectionRunner(store, batch_size=5000)
        runner.catch_up()
        replayed, seconds = runner.rebuild()
        return {
            "events": events,
            "replayed": replayed,
            "seconds": round(seconds, 3),
            "events_per_s": round(replayed / seconds),
        }
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8000)
    args = parser.parse_args()
    result: dict[str, object] = {
        "benchmark": "projection_rebuild",
        "runs": args.runs,
        "goal_postgresql_events_per_s": 50000,
    }
    with postgres_database() as url:
        result["postgresql"] = measure(url, args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        result["sqlite"] = measure(f"sqlite:///{tmp}/bench.db", args.runs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
