"""An ASHA experiment outlives a control-plane kill: the same decisions as if nothing had happened.

A real `runyard server` (PostgreSQL, a private NATS) and an agent with
declared GPUs run a grid of 8 trials, 2 at a time, whose validation curves are
known functions (`q * (1 - 0.5**epoch)`). Mid-experiment the server is killed
with SIGKILL and a new one started on the same database. Afterwards the log is
replayed into a fresh, uninterrupted set of searchers (the pure domain code):
every decision it derives must be in the log exactly once, with the same event
id and content, and the log must hold no decision it does not derive.
"""

from __future__ import annotations

import json
import shlex
import signal
import textwrap
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from google.protobuf.message import Message

from runyard.server.domain.events import decode
from runyard.server.domain.search_state import INPUT_TYPES, NewBest, Numbered, Searches
from runyard.server.domain.searchers import Complete, CreateTrial, Promote, StopRun
from runyard.server.search_driver import DECISION_TYPES, decision_event_id
from runyard.server.store import EventStore
from runyard.v1 import common_pb2, events_pb2, resources_pb2, run_service_pb2
from tests.integration.scheduling.helpers import (
    attempts,
    experiment,
    start_gpu_agents,
    stubs_at,
    submit,
    wait_until,
)
from tests.support.services import free_port
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration
RS = common_pb2.RunState
QUALITIES = [0.5, 0.9, 0.3, 0.8, 0.6, 0.95, 0.4, 0.7]

TRAIN = (
    "import sys, time; q = float(sys.argv[1]); "
    "[time.sleep(0.4) or print(f'epoch {e} val={q * (1 - 0.5 ** e):.6f}', flush=True) for e in range(1, 9)]"
)

MANIFEST = textwrap.dedent(
    f"""\
    name: asha-restart
    framework: {{name: python}}
    command: {json.dumps(f"python -u -c {shlex.quote(TRAIN)} ${{q}}")}
    results: s3://results/asha-restart
    resources: {{gpus: 1}}
    hyperparameters:
      q: {{type: categorical, values: {QUALITIES}}}
    search:
      method: grid
      max_parallel: 2
      metric: val
      goal: maximize
      early_stopping: asha
      asha: {{min_resource: 1, reduction_factor: 2, max_resource: 8}}
    metrics:
      patterns: ['epoch (?P<step>\\d+) val=(?P<val>[0-9.]+)']
    """
)


@dataclass
class Logged:
    position: int
    msg: Message


def read_log(database_url: str) -> tuple[list[Numbered], dict[uuid.UUID, Logged]]:
    """What an uninterrupted driver decides from this log, and every event by id."""
    store = EventStore.open(database_url, migrate=False, pool_size=1, max_overflow=0)
    inputs = {t.DESCRIPTOR.full_name for t in INPUT_TYPES}
    searches = Searches()
    derived: list[Numbered] = []
    by_id: dict[uuid.UUID, Logged] = {}
    try:
        after = 0
        while batch := store.read_all(after, 1000):
            for e in batch:
                after = e.position
                msg = decode(e.type, e.data)
                by_id[e.event_id] = Logged(e.position, msg)
                if e.type in inputs:
                    derived.extend(searches.feed(e.stream_id, e.correlation_id, msg, e.recorded_at))
    finally:
        store.close()
    return derived, by_id


def check_recorded(numbered: Numbered, by_id: dict[uuid.UUID, Logged]) -> int:
    """The decision is in the log under its id with the same content; returns its position."""
    event_id = decision_event_id(numbered.experiment_id, numbered.number)
    assert event_id in by_id, f"decision {numbered} is not in the log"
    logged, action = by_id[event_id].msg, numbered.action
    if isinstance(action, CreateTrial):
        assert isinstance(logged, events_pb2.ExperimentRunAdded)
        assert (logged.run_id, logged.index) == (action.run_id, action.index)
        created = by_id[uuid.uuid5(event_id, "run")].msg
        assert isinstance(created, events_pb2.RunCreated) and created.run_id == action.run_id
        assert created.spec.hyperparameters["q"].number_value == action.hyperparameters["q"]
    elif isinstance(action, StopRun):
        assert isinstance(logged, events_pb2.RunStopRequested | events_pb2.RunStoppedEarly), logged
        if isinstance(logged, events_pb2.RunStopRequested):
            assert (logged.rung, logged.level, logged.value) == (action.rung, action.level, action.value)
    elif isinstance(action, Promote):
        assert logged == events_pb2.RunPromoted(
            run_id=action.run_id, rung=action.rung, level=action.level, value=action.value
        )
    elif isinstance(action, NewBest):
        assert logged == events_pb2.ExperimentBestFound(run_id=action.run_id, step=action.step, value=action.value)
    elif isinstance(action, Complete):
        assert logged == events_pb2.ExperimentCompleted(reason=action.reason)
    return by_id[event_id].position


def search_through_a_kill(
    stack: Stack, manifest: str, mid: Callable[[list[Numbered]], bool], what: str
) -> tuple[list[resources_pb2.Run], list[Numbered], dict[uuid.UUID, Logged]]:
    """Submit, SIGKILL the server once `mid(decisions so far)`, restart it, let the search end; check the log."""
    first = stack.start_server()
    with stack.channel() as channel:
        stubs = Stubs(channel)
        start_gpu_agents(stack, stubs, {"gpu-a": "2xH100"})
        exp = submit(stubs, manifest)
        assert exp.run_count == 0, "a searched experiment starts empty: its searcher adds the runs"
        wait_until(what, lambda: mid(read_log(stack.database_url)[0]), timeout=90, stack=stack)
    first.stop(signal.SIGKILL)
    _, before_kill = read_log(stack.database_url)
    kill_position = max(logged.position for logged in before_kill.values())

    port = free_port()
    stack.start_server(port=port)
    channel, stubs = stubs_at(f"127.0.0.1:{port}", stack.admin_key)
    with channel:
        wait_until(
            "the experiment to complete after the restart",
            lambda: experiment(stubs, exp.id).state == resources_pb2.EXPERIMENT_STATE_COMPLETED,
            timeout=120,
            stack=stack,
        )
        runs = list(stubs.runs.ListRuns(run_service_pb2.ListRunsRequest(experiment_id=exp.id), timeout=10).runs)

    derived, by_id = read_log(stack.database_url)
    positions = [check_recorded(d, by_id) for d in derived]
    assert any(p > kill_position for p in positions), "the new server went on deciding"
    expected_ids = {decision_event_id(d.experiment_id, d.number) for d in derived}
    decision_types = tuple(t for t in DECISION_TYPES if t is not events_pb2.RunStoppedEarly)
    extra = [m.msg for i, m in by_id.items() if isinstance(m.msg, decision_types) and i not in expected_ids]
    assert not extra, f"the log holds decisions an uninterrupted searcher does not make: {extra}"
    assert sum(isinstance(d.action, Complete) for d in derived) == 1
    return runs, derived, by_id


def test_killing_the_control_plane_mid_search_changes_no_decision(stack: Stack) -> None:
    def stopped_one_midway(derived: list[Numbered]) -> bool:
        stops = [d for d in derived if isinstance(d.action, StopRun)]
        trials = [d for d in derived if isinstance(d.action, CreateTrial)]
        return bool(stops) and 3 <= len(trials) < len(QUALITIES)

    runs, derived, _ = search_through_a_kill(
        stack, MANIFEST, stopped_one_midway, "the searcher to have stopped a run, mid-experiment"
    )
    trials = [d.action for d in derived if isinstance(d.action, CreateTrial)]
    assert [t.hyperparameters["q"] for t in trials] == QUALITIES, "every trial of the grid, in order, once"
    states = {r.id: r.state for r in runs}
    assert len(states) == len(QUALITIES)
    stopped = {d.action.run_id for d in derived if isinstance(d.action, StopRun)}
    assert stopped and all(states[r] == RS.RUN_STATE_STOPPED_EARLY for r in stopped)
    assert all(s == RS.RUN_STATE_COMPLETED for r, s in states.items() if r not in stopped)
    best = max(QUALITIES)
    assert [d.action for d in derived if isinstance(d.action, NewBest)][-1].value == pytest.approx(
        best * (1 - 0.5**8), abs=1e-6
    )
    # A stopped run's GPU billing ends when it stops, not at the end of its 8 epochs.
    held = {a.run_id: a for a in attempts(stack.database_url)}
    for run_id in stopped:
        assert held[run_id].outcome == "RunStoppedEarly"


TPE_RUNS = 6


def test_a_bayesian_search_asks_the_same_trials_across_a_kill(stack: Stack) -> None:
    """TPE's next trial depends on the results told so far: after the kill it must still be the same one."""
    tpe = (
        MANIFEST.replace("name: asha-restart", "name: tpe-restart")
        .replace(f"q: {{type: categorical, values: {QUALITIES}}}", "q: {type: double, min: 0.3, max: 0.95}")
        .replace("method: grid", f"method: tpe\n  max_runs: {TPE_RUNS}\n  seed: 5")
        .replace("  early_stopping: asha\n  asha: {min_resource: 1, reduction_factor: 2, max_resource: 8}\n", "")
    )
    assert "method: tpe" in tpe and "early_stopping" not in tpe

    def told_one_midway(derived: list[Numbered]) -> bool:
        trials = [d for d in derived if isinstance(d.action, CreateTrial)]
        return 3 <= len(trials) < TPE_RUNS

    runs, derived, _ = search_through_a_kill(stack, tpe, told_one_midway, "TPE to have asked a third trial")
    trials = [d.action for d in derived if isinstance(d.action, CreateTrial)]
    assert [t.index for t in trials] == list(range(TPE_RUNS))
    assert all(0.3 <= float(t.hyperparameters["q"]) <= 0.95 for t in trials)
    assert sorted(r.state for r in runs) == [RS.RUN_STATE_COMPLETED] * TPE_RUNS
