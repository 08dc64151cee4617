"""The search driver executes ASHA's pause decisions on the write side: pause, resume, stop from PAUSED, once each.

A real driver and message bus over an SQLite log; the agent's side is
played by its reports (metrics, canceled), as ingest would apply them.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

from runyard.server.app.aggregates import EXPERIMENT, RUN
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import ApplyAgentReport, AssignRun, SubmitExperiment
from runyard.server.domain import events as ev
from runyard.server.domain.run_states import PAUSED, QUEUED, STOPPED_EARLY
from runyard.server.search_driver import SearchDriver
from runyard.server.store import EventStore
from runyard.v1 import common_pb2, events_pb2
from tests.unit.server.app.helpers import account, report

YAML = """\
name: pause-asha
framework: {name: python}
command: python train.py --lr ${lr}
results: s3://results/pause-asha
resources: {gpus: 1}
hyperparameters: {lr: [0.1, 0.2, 0.3]}
search:
  method: grid
  max_parallel: 1
  metric: acc
  goal: maximize
  early_stopping: asha
  asha: {min_resource: 1, reduction_factor: 2, max_resource: 4, mode: pause}
"""
_ids = itertools.count()


def metric(bus: MessageBus, run_id: str, step: int, value: float) -> None:
    attempt = bus.load(RUN, run_id).attempt
    point = common_pb2.MetricPoint(name="acc", step=step, value=value)
    body = events_pb2.RunMetricsReported(attempt=attempt, points=[point])
    bus.execute(ApplyAgentReport(report(run_id, f"m-{next(_ids)}", metrics=body)))


def stopped(bus: MessageBus, run_id: str) -> None:
    """The agent stopped the attempt on request (after its last checkpoint) and reports it canceled."""
    attempt = bus.load(RUN, run_id).attempt
    body = events_pb2.RunCanceled(attempt=attempt)
    bus.execute(ApplyAgentReport(report(run_id, f"c-{next(_ids)}", canceled=body)))


def test_the_driver_pauses_promotes_by_resuming_and_stops_the_rest_and_a_restart_repeats_nothing(
    tmp_path: Path,
) -> None:
    with contextlib.closing(EventStore.open(f"sqlite:///{tmp_path}/log.db")) as store:
        bus = MessageBus(store)
        account(bus)
        experiment_id = bus.execute(SubmitExperiment("acct", YAML)).experiment_id
        driver = SearchDriver(store, bus)
        driver._start_over()

        def step() -> None:
            driver._catch_up()

        step()
        (first,) = bus.load(EXPERIMENT, experiment_id).run_ids
        bus.execute(AssignRun(first, "agent-1", ["GPU-0"]))
        metric(bus, first, 1, 0.5)
        step()
        run = bus.load(RUN, first)
        assert (run.pause_requested, run.paused_rung, run.pause_reason) == (True, 1, "asha")
        stopped(bus, first)
        assert bus.load(RUN, first).state == PAUSED
        step()  # its RunPaused read: nothing promotable at rung 0 (1 result), the next trial takes the GPU
        second = bus.load(EXPERIMENT, experiment_id).run_ids[1]
        bus.execute(AssignRun(second, "agent-1", ["GPU-0"]))
        metric(bus, second, 1, 0.4)
        step()  # rung 0: 2 results, the top half is the first run: it resumes, the second pauses
        assert bus.load(RUN, first).state == QUEUED
        resumed = [e for e in store.read_stream(ev.run_stream(first)) if e.type.endswith("RunResumed")]
        assert [ev.decode(e.type, e.data) for e in resumed] == [events_pb2.RunResumed(reason="asha", rung=1)]
        stopped(bus, second)

        # A restart: a fresh driver replays the log and records nothing it had recorded.
        head = store.head_position()
        again = SearchDriver(store, bus)
        again._start_over()
        again._catch_up()
        assert store.head_position() == head

        bus.execute(AssignRun(first, "agent-1", ["GPU-0"]))
        metric(bus, first, 1, 0.99)  # the resumed attempt's copy of an earlier step: changes nothing
        metric(bus, first, 2, 0.7)
        again._catch_up()  # alone at rung 1: it pauses; the third trial starts
        stopped(bus, first)
        again._catch_up()
        third = bus.load(EXPERIMENT, experiment_id).run_ids[2]
        bus.execute(AssignRun(third, "agent-1", ["GPU-0"]))
        metric(bus, third, 1, 0.1)
        again._catch_up()  # rung 0: 3 results, top 1 (the first run) already promoted: the third pauses
        stopped(bus, third)
        again._catch_up()  # nothing left: the paused runs never promoted are stopped from PAUSED, the search completes
        assert {r: bus.load(RUN, r).state for r in (first, second, third)} == dict.fromkeys(
            (first, second, third), STOPPED_EARLY
        )
        assert bus.load(EXPERIMENT, experiment_id).completed == "every trial ended"
