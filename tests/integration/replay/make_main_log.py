# mypy: ignore-errors
# It runs against main 696c377, where runyard.server.commands still exists (see the docstring).
"""Write an event log with the code of main at 696c377, and the read models that code computed from it.

Run once, against the old code, from its checkout (it imports whatever `runyard` that venv has):

    cd /work/main && .venv/bin/python /work/wt/facts/tests/integration/replay/make_main_log.py \\
        /work/wt/facts/tests/integration/replay/main_696c377

The log is made by the old command handlers, domain and searcher, as the server would make it:
plain and searched experiments, priorities (one changed later), resources, runs that ran,
finished, failed, were canceled, re-queued after a lost agent and stopped early by ASHA, a TPE
search, and an experiment stored before a stricter parser (its manifest no longer validates).
Writes `events.jsonl` (one event a line: position, stream, version, type, base64 data, event id,
correlation, recorded time) and `read_models.json` (the projection tables and each experiment as
the API returns it, runs with their scores).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from sqlalchemy import select

from runyard.server.commands import Commands
from runyard.server.domain import events as ev
from runyard.server.domain.search_state import INPUT_TYPES, NewBest, Numbered, Searches
from runyard.server.domain.searchers import Complete, CreateTrial, Promote, StopRun
from runyard.server.projections import schema
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.queries.resources import Queries
from runyard.server.search_driver import decision_event_id
from runyard.server.store import EventStore, NewEvent
from runyard.v1 import common_pb2, events_pb2

ACCOUNT = "acct-fixture"
AGENT = "agent-fixture-1"

PLAIN = """name: plain-single
description: one run, high priority, a GPU and labels
framework: {name: pytorch, version: "2.13"}
command: python train.py --epochs 3
resources: {gpus: 1, cpus: 2, memory: 4Gi, gpu_model: H100, labels: {pool: research}}
data: s3://datasets/digits
results: s3://results/plain
metrics: {patterns: ['val_loss=(?P<val_loss>[0-9.]+)']}
env: {SEED: "1"}
priority: 5
max_restarts: 1
search: {method: single, metric: val_loss, goal: minimize}
"""

GRID = """name: grid-plain
command: python train.py --lr ${lr} --hidden ${hidden}
resources: {cpus: 1, memory: 512Mi}
results: s3://results/grid/
hyperparameters:
  lr: {type: categorical, values: [0.1, 0.01]}
  hidden: {type: int, min: 64, max: 128, step: 64}
priority: -3
search: {method: grid, metric: val_accuracy, goal: maximize}
"""

ASHA = """name: asha-random
command: python train.py --lr ${lr} --dropout ${dropout} --layers ${layers}
results: s3://results/asha
hyperparameters:
  lr: {type: log, min: 1.0e-4, max: 1.0e-1}
  dropout: {type: double, min: 0.0, max: 0.5}
  layers: {type: categorical, values: [1, 2, 3]}
search:
  method: random
  max_runs: 6
  max_parallel: 2
  seed: 7
  metric: val_accuracy
  goal: maximize
  early_stopping: asha
  asha: {min_resource: 1, reduction_factor: 2, max_resource: 4}
  max_gpu_hours: 100
"""

LIST = """name: list-sequence
framework: {name: tensorflow, version: "2.16"}
command: python fit.py --units ${units} --act ${act} --flag ${flag}
results: s3://results/list
hyperparameters:
  units: {type: categorical, values: [32, 64]}
  act: {type: categorical, values: [relu, tanh]}
  flag: {type: const, value: true}
search:
  method: list
  max_parallel: 1
  runs:
    - {units: 32, act: relu}
    - {units: 64, act: tanh}
"""

TPE = """name: tpe-search
command: python train.py --lr ${lr} --width ${width}
results: s3://results/tpe
hyperparameters:
  lr: {type: double, min: 0.001, max: 0.1}
  width: {type: int, min: 8, max: 64, step: 8}
search: {method: tpe, max_runs: 3, max_parallel: 1, seed: 3, metric: loss, goal: minimize, max_time: 10d}
"""

#: Stored before a stricter parser: `search.metric` without `search.goal` validates no more.
LEGACY = """name: legacy-lenient
command: python old.py
results: s3://results/legacy
priority: 7
search: {metric: acc}
"""


def new(msg: Any, correlation: str | None) -> NewEvent:
    type_, data = ev.encode(msg)
    return NewEvent(type=type_, data=data, event_id=uuid.uuid4(), correlation_id=correlation)


class Life:
    """Drives runs through their states with the old handlers, as agents' reports would."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.commands = Commands(store)
        self.searches = Searches()
        self.after = 0
        self.known: set[uuid.UUID] = set()
        self.inputs = {t.DESCRIPTOR.full_name for t in INPUT_TYPES}

    def start(self, run_id: str, gpus: int = 0) -> int:
        gpu_ids = [str(i) for i in range(gpus)]
        out = self.commands.assign_run(run_id, AGENT, gpu_ids, "H100" if gpus else "")
        attempt = self.commands.load_run(run_id).attempt
        self.commands.update_run(run_id, lambda r: r.report_staging(attempt))
        self.commands.update_run(run_id, lambda r: r.report_started(attempt))
        assert out.events
        return attempt

    def metrics(self, run_id: str, attempt: int, name: str, step: int, value: float) -> None:
        run = self.commands.load_run(run_id)
        point = common_pb2.MetricPoint(name=name, step=step, value=value, time_us=step * 1000, source="stdout")
        self.store.append(
            ev.run_metrics_stream(run_id),
            [new(events_pb2.RunMetricsReported(run_id=run_id, attempt=attempt, points=[point]), run.experiment_id)],
        )
        logged = events_pb2.RunLogged(
            run_id=run_id, attempt=attempt, lines=[common_pb2.LogLine(text=f"{name}={value}", time_us=step)]
        )
        self.store.append(ev.run_logs_stream(run_id), [new(logged, run.experiment_id)])

    def complete(self, run_id: str, attempt: int) -> None:
        self.commands.update_run(run_id, lambda r: r.report_uploading(attempt, 0))
        self.commands.update_run(run_id, lambda r: r.report_completed(attempt, r.spec.results_uri))

    def stopped(self, run_id: str, attempt: int) -> None:
        """The agent stopped the run the searcher told to stop."""
        self.commands.update_run(run_id, lambda r: r.report_canceled(attempt, "stopped"))

    def pump(self) -> list[str]:
        """Feed the searcher everything new, record its decisions as the driver does; the runs told to stop."""
        stopped: list[str] = []
        while batch := self.store.read_all(self.after, 500):
            for event in batch:
                self.after = event.position
                if event.type not in self.inputs:
                    continue
                msg = ev.decode(event.type, event.data)
                for numbered in self.searches.feed(event.stream_id, event.correlation_id, msg, event.recorded_at):
                    stopped += self.record(numbered)
        return stopped

    def record(self, numbered: Numbered) -> list[str]:
        event_id = decision_event_id(numbered.experiment_id, numbered.number)
        if event_id in self.known:
            return []
        self.known.add(event_id)
        exp, action = numbered.experiment_id, numbered.action
        if isinstance(action, CreateTrial):
            self.commands.add_trial(exp, action.index, action.hyperparameters, event_id)
        elif isinstance(action, StopRun):
            outcome = self.commands.stop_run_early(action.run_id, action, event_id)
            if any(isinstance(m, events_pb2.RunStopRequested) for m in outcome.events):
                return [action.run_id]
        elif isinstance(action, Promote):
            promoted = events_pb2.RunPromoted(
                run_id=action.run_id, rung=action.rung, level=action.level, value=action.value
            )
            self.commands.record_for_experiment(exp, promoted, event_id)
        elif isinstance(action, NewBest):
            best = events_pb2.ExperimentBestFound(run_id=action.run_id, step=action.step, value=action.value)
            self.commands.record_for_experiment(exp, best, event_id)
        elif isinstance(action, Complete):
            self.commands.record_for_experiment(exp, events_pb2.ExperimentCompleted(reason=action.reason), event_id)
        return []

    def queued_runs(self, experiment_id: str) -> list[str]:
        t = schema.runs
        ProjectionRunner(self.store).catch_up()
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(t.c.id)
                .where(t.c.experiment_id == experiment_id, t.c.state == common_pb2.RUN_STATE_QUEUED)
                .order_by(t.c.idx)
            )
            return [r.id for r in rows]

    def search(self, experiment_id: str, metric: str, score: Any, steps: int) -> None:
        """Run the searched experiment's runs two at a time until its searcher completes it."""
        self.pump()
        for _round in range(20):
            queued = self.queued_runs(experiment_id)
            if not queued:
                break
            running = {run_id: self.start(run_id, gpus=1) for run_id in queued}
            for step in range(1, steps + 1):
                for run_id, attempt in list(running.items()):
                    run = self.commands.load_run(run_id)
                    self.metrics(run_id, attempt, metric, step, score(run, step))
                for run_id in self.pump():
                    self.stopped(run_id, running.pop(run_id))
            for run_id, attempt in running.items():
                self.complete(run_id, attempt)
            self.pump()


def hp(run: Any, name: str) -> float:
    value: float = run.spec.hyperparameters[name].number_value
    return value


def build(store: EventStore) -> None:
    life = Life(store)
    commands = life.commands
    commands.create_account(ACCOUNT, name="Fixture team", gpu_quota=8, storage_prefixes=["s3://results/"])
    registered = events_pb2.AgentRegistered(
        agent_id=AGENT,
        hostname="gpu-host-1",
        slots=4,
        gpu_ids=["0", "1"],
        labels={"pool": "research"},
        frameworks=[common_pb2.Framework(name="pytorch", version="2.13")],
        runtime="process",
    )
    store.append(ev.agent_stream(AGENT), [new(registered, None)])

    # A plain run: lost with its agent once (re-queued, restarts remain), then completed.
    plain, _ = commands.create_experiment(ACCOUNT, PLAIN, "s3://code/plain.tar.gz", "req-plain")
    (run,) = commands.load_experiment(plain).run_ids
    attempt = life.start(run, gpus=1)
    life.metrics(run, attempt, "val_loss", 1, 0.9)
    commands.agent_lost(AGENT, [run], "heartbeats stopped")
    store.append(ev.agent_stream(AGENT), [new(registered, None)])
    attempt = life.start(run, gpus=1)
    for step, loss in enumerate([0.8, 0.4, 0.5], start=1):
        life.metrics(run, attempt, "val_loss", step, loss)
    life.complete(run, attempt)

    # A grid with every run at submit: completed, failed, canceled in the queue, still queued; priority changed.
    grid, _ = commands.create_experiment(ACCOUNT, GRID, "s3://code/grid.tar.gz", "req-grid")
    r0, r1, r2, _r3 = commands.load_experiment(grid).run_ids
    a0 = life.start(r0)
    for step, acc in enumerate([0.5, 0.7, 0.7, 0.6], start=1):
        life.metrics(r0, a0, "val_accuracy", step, acc)
    life.complete(r0, a0)
    a1 = life.start(r1)
    life.metrics(r1, a1, "val_accuracy", 1, 0.3)
    commands.update_run(r1, lambda r: r.report_failed(a1, common_pb2.FAILURE_REASON_USER_CODE, 1, "exit status 1"))
    commands.cancel_run(r2, "not needed")
    commands.set_experiment_priority(grid, 9)

    # Searched: ASHA over seeded random trials, two at a time; some stopped at a rung.
    asha, _ = commands.create_experiment(ACCOUNT, ASHA, "s3://code/asha.tar.gz", "req-asha")
    life.search(asha, "val_accuracy", lambda run, step: round(0.2 + 0.1 * step + hp(run, "dropout"), 6), 4)

    # Searched: a list, one run at a time, no metric.
    listed, _ = commands.create_experiment(ACCOUNT, LIST, "", "req-list")
    life.search(listed, "loss", lambda run, step: 1.0 / step, 2)

    # Searched: TPE, minimizing, with a time budget that does not run out.
    tpe, _ = commands.create_experiment(ACCOUNT, TPE, "s3://code/tpe.tar.gz", "req-tpe")
    life.search(tpe, "loss", lambda run, step: round(abs(hp(run, "lr") - 0.05) + 1.0 / step, 6), 2)

    # Stored before a stricter parser: appended as the old server stored it, run finished with points.
    legacy = "exp-legacy00000000"
    legacy_run = ev.run_id_for(legacy, 0)
    opened = events_pb2.ExperimentCreated(
        experiment_id=legacy, account_id=ACCOUNT, name="legacy-lenient", manifest_yaml=LEGACY, run_ids=[legacy_run]
    )
    spec = common_pb2.RunSpec(command="python old.py", results_uri=f"s3://results/legacy/{legacy_run}", priority=7)
    created = events_pb2.RunCreated(run_id=legacy_run, experiment_id=legacy, account_id=ACCOUNT, index=0, spec=spec)
    with store.transaction() as tx:
        tx.append(ev.experiment_stream(legacy), [new(opened, legacy)])
        tx.append(ev.run_stream(legacy_run), [new(created, legacy)])
    attempt = life.start(legacy_run)
    for step, acc in enumerate([0.4, 0.8, 0.6], start=1):
        life.metrics(legacy_run, attempt, "acc", step, acc)
    life.complete(legacy_run, attempt)

    # Searched and still searching: its first two trials wait in the queue.
    commands.create_experiment(ACCOUNT, ASHA.replace("asha-random", "asha-waiting"), "", "req-waiting")
    life.pump()

    # Canceled while its runs wait.
    canceled, _ = commands.create_experiment(ACCOUNT, GRID.replace("grid-plain", "grid-canceled"), "", "req-cancel")
    commands.cancel_experiment(canceled, "changed my mind")
    life.pump()


def jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def dump(store: EventStore, out: Path) -> None:
    lines = []
    after = 0
    while batch := store.read_all(after, 1000):
        for e in batch:
            after = e.position
            lines.append(
                json.dumps(
                    {
                        "position": e.position,
                        "stream": e.stream_id,
                        "version": e.version,
                        "type": e.type,
                        "data": base64.b64encode(e.data).decode(),
                        "event_id": str(e.event_id),
                        "correlation": e.correlation_id,
                        "recorded_at": e.recorded_at.isoformat(),
                    },
                    sort_keys=True,
                )
            )
    (out / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ProjectionRunner(store).rebuild()
    tables: dict[str, list[dict[str, object]]] = {}
    with store.engine.connect() as conn:
        for table in schema.PROJECTION_TABLES:
            rows = conn.execute(select(table).order_by(*table.primary_key.columns)).mappings()
            tables[table.name] = [{k: jsonable(v) for k, v in row.items()} for row in rows]
    queries = Queries(store.engine)
    experiments = []
    for _position, summary in queries.list_experiments(limit=1000):
        full = queries.get_experiment(summary.id)
        assert full is not None
        experiments.append(json_format.MessageToDict(full, preserving_proto_field_name=True))
    models = {"tables": tables, "experiments": experiments, "decisions": decisions(store)}
    (out / "read_models.json").write_text(json.dumps(models, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def decisions(store: EventStore) -> list[dict[str, object]]:
    """Every decision a searcher fed the whole log derives, in order (a restarted driver derives these)."""
    searches = Searches()
    inputs = {t.DESCRIPTOR.full_name for t in INPUT_TYPES}
    out: list[dict[str, object]] = []
    for e in store.read_all(0, 100_000):
        if e.type in inputs:
            for n in searches.feed(e.stream_id, e.correlation_id, ev.decode(e.type, e.data), e.recorded_at):
                fields = {k: jsonable(v) for k, v in dataclasses.asdict(n.action).items()}
                kind = type(n.action).__name__
                out.append({"experiment": n.experiment_id, "number": n.number, "kind": kind, **fields})
    return out


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = EventStore.open(f"sqlite:///{tmp}/main.db")
        try:
            build(store)
            dump(store, out)
        finally:
            store.close()


if __name__ == "__main__":
    main()
