"""Synthetic histories: the whole life of many runs, appended straight to a log.

Used where a test or benchmark needs a big, realistic log quickly, without
training anything: projection rebuilds and their benchmark.
"""

from __future__ import annotations

import uuid

from google.protobuf.message import Message

from runyard.server.domain import events as ev
from runyard.server.store import EventStore, NewEvent
from runyard.v1 import common_pb2, events_pb2

RUNS_PER_EXPERIMENT = 10
#: Every other experiment is searched: ASHA adds its runs one by one and stops the last few early.
SEARCHED_MANIFEST = (
    "name: bench-NUMBER\ncommand: python train.py --lr ${lr}\nresults: s3://r\n"
    "hyperparameters:\n  lr: {type: double, min: 0.0, max: 1.0}\n"
    "search: {method: random, max_runs: 10, metric: val_accuracy, goal: maximize, early_stopping: asha}\n"
)
STOPPED_PER_SEARCH = 3
#: A run's output as the agent batches it, shaped after the digits example's runs (`make demo`: 7 log batches of
#: about 5 lines and 4 metric batches per run of about 5 seconds). Longer runs only add more of these.
LOG_BATCHES_PER_RUN = 7
LOG_LINES_PER_BATCH = 5
METRIC_BATCHES_PER_RUN = 4


def _new(msg: Message, correlation: str) -> NewEvent:
    type_, data = ev.encode(msg)
    return NewEvent(type=type_, data=data, event_id=uuid.uuid4(), correlation_id=correlation)


def fill(store: EventStore, runs: int) -> int:
    count = 0
    for e in range(runs // RUNS_PER_EXPERIMENT):
        exp_id = f"exp-bench{e:06d}"
        run_ids = [f"run-b{e:06d}x{i:02d}" for i in range(RUNS_PER_EXPERIMENT)]
        searched = e % 2 == 1
        manifest = SEARCHED_MANIFEST.replace("NUMBER", str(e)) if searched else f"name: bench-{e}"
        with store.transaction() as tx:
            tx.append(
                ev.experiment_stream(exp_id),
                [
                    _new(
                        events_pb2.ExperimentCreated(
                            experiment_id=exp_id,
                            account_id="bench",
                            name="bench",
                            manifest_yaml=manifest,
                            run_ids=[] if searched else run_ids,
                        ),
                        exp_id,
                    )
                ],
            )
            count += 1
            for i, run_id in enumerate(run_ids):
                stopped = searched and i >= RUNS_PER_EXPERIMENT - STOPPED_PER_SEARCH
                if searched:
                    added: list[Message] = [
                        events_pb2.ExperimentRunAdded(run_id=run_id, index=i, hyperparameters={"lr": str(i)})
                    ]
                    if not stopped:
                        added.append(events_pb2.RunPromoted(run_id=run_id, rung=0, level=1, value=0.5))
                    tx.append(ev.experiment_stream(exp_id), [_new(m, exp_id) for m in added])
                    count += len(added)
                spec = common_pb2.RunSpec(command=f"python train.py --lr {i}", results_uri=f"s3://r/{run_id}")
                spec.hyperparameters["lr"].number_value = i / 10
                life: list[Message] = [
                    events_pb2.RunCreated(run_id=run_id, experiment_id=exp_id, account_id="bench", index=i, spec=spec),
                    events_pb2.RunAssigned(attempt=1, agent_id="agent-1", gpu_ids=["0"], gpu_model="H100"),
                    events_pb2.RunStaging(attempt=1),
                    events_pb2.RunStarted(attempt=1),
                ]
                if stopped:
                    life += [
                        events_pb2.RunStopRequested(reason="asha", rung=0, level=1, value=0.1),
                        events_pb2.RunStoppedEarly(attempt=1, reason="asha"),
                    ]
                else:
                    life += [
                        events_pb2.RunUploading(attempt=1),
                        events_pb2.RunCompleted(attempt=1, results_uri=spec.results_uri),
                    ]
                tx.append(ev.run_stream(run_id), [_new(m, exp_id) for m in life])
                logs = [
                    events_pb2.RunLogged(
                        run_id=run_id,
                        attempt=1,
                        lines=[
                            common_pb2.LogLine(stream=common_pb2.LOG_STREAM_STDOUT, text=f"epoch {k} batch {n} ok")
                            for n in range(LOG_LINES_PER_BATCH)
                        ],
                    )
                    for k in range(LOG_BATCHES_PER_RUN)
                ]
                tx.append(ev.run_logs_stream(run_id), [_new(m, exp_id) for m in logs])
                metrics = [
                    events_pb2.RunMetricsReported(
                        run_id=run_id,
                        attempt=1,
                        points=[
                            common_pb2.MetricPoint(name="train_loss", step=k, value=1 / (k + 1), source="runyard"),
                            common_pb2.MetricPoint(name="val_accuracy", step=k, value=0.5 + k / 10, source="runyard"),
                        ],
                    )
                    for k in range(METRIC_BATCHES_PER_RUN)
                ]
                tx.append(ev.run_metrics_stream(run_id), [_new(m, exp_id) for m in metrics])
                count += len(life) + len(logs) + len(metrics)
            if searched:
                done = [
                    events_pb2.ExperimentBestFound(run_id=run_ids[0], step=1, value=0.6),
                    events_pb2.ExperimentCompleted(reason="every trial ended"),
                ]
                tx.append(ev.experiment_stream(exp_id), [_new(m, exp_id) for m in done])
                count += len(done)
    return count
