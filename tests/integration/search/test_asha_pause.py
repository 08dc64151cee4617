"""ASHA's pause variant on a live stack: runs pause at rungs, the promoted ones resume, the rest are stopped.

A real `runyard server` (PostgreSQL, a private NATS) and an agent with two
declared GPUs run a grid of 6 trials, 2 at a time, under
`asha: {mode: pause}`, rungs at 1, 2 and 4 epochs of 8. The script keeps its
epoch in `$CHECKPOINT_DIR` when it has one (and resumes from it), else it
starts over at epoch 1. A pause is the agent stopping the attempt on the
server's request (RunPauseRequested, then RunPaused), a promotion a RunResumed
and a new attempt. Afterwards the log is replayed into fresh searchers: every
decision they derive must be in the log under its id, runs never promoted
must have ended STOPPED_EARLY from PAUSED, and a paused run holds no GPU.
"""

from __future__ import annotations

import json
import shlex
import textwrap

import pytest

from runyard.server.domain.searchers import PauseRun, ResumeRun, StopRun
from runyard.server.domain.searchers.asha import NOT_PROMOTED
from runyard.server.search_driver import decision_event_id
from runyard.v1 import common_pb2, events_pb2, resources_pb2, run_service_pb2
from tests.integration.scheduling.helpers import attempts, experiment, start_gpu_agents, submit, wait_until
from tests.integration.search.test_restart_decisions import check_recorded, read_log
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration
RS = common_pb2.RunState
QUALITIES = [0.5, 0.9, 0.3, 0.8, 0.6, 0.95]

TRAIN = (
    "import os, sys, time; q = float(sys.argv[1]); d = os.environ.get('CHECKPOINT_DIR', ''); "
    "p = os.path.join(d, 'epoch'); s = int(open(p).read()) + 1 if d and os.path.exists(p) else 1; "
    "[time.sleep(0.4) or print(f'epoch {e} val={q * (1 - 0.5 ** e):.6f}', flush=True) "
    "or (d and (open(p + '.tmp', 'w').write(str(e)), os.replace(p + '.tmp', p))) for e in range(s, 9)]"
)

MANIFEST = textwrap.dedent(
    f"""\
    name: asha-pause
    framework: {{name: python}}
    command: {json.dumps(f"python -u -c {shlex.quote(TRAIN)} ${{q}}")}
    results: s3://results/asha-pause
    resources: {{gpus: 1}}
    hyperparameters:
      q: {{type: categorical, values: {QUALITIES}}}
    search:
      method: grid
      max_parallel: 2
      metric: val
      goal: maximize
      early_stopping: asha
      asha: {{min_resource: 1, reduction_factor: 2, max_resource: 8, mode: pause}}
    metrics:
      patterns: ['epoch (?P<step>\\d+) val=(?P<val>[0-9.]+)']
    """
)


def test_a_pause_asha_search_pauses_promotes_by_resuming_and_stops_the_runs_never_promoted(stack: Stack) -> None:
    stack.start_server()
    with stack.channel() as channel:
        stubs = Stubs(channel)
        start_gpu_agents(stack, stubs, {"gpu-a": "2xH100"})
        exp = submit(stubs, MANIFEST)
        wait_until(
            "the pause-ASHA experiment to complete",
            lambda: experiment(stubs, exp.id).state == resources_pb2.EXPERIMENT_STATE_COMPLETED,
            timeout=180,
            stack=stack,
        )
        runs = list(stubs.runs.ListRuns(run_service_pb2.ListRunsRequest(experiment_id=exp.id), timeout=10).runs)

    derived, by_id = read_log(stack.database_url)
    for d in derived:
        if isinstance(d.action, PauseRun | ResumeRun):
            logged = by_id[decision_event_id(d.experiment_id, d.number)].msg
            if isinstance(d.action, PauseRun):
                assert logged in (
                    events_pb2.RunPauseRequested(reason="asha", rung=d.action.rung + 1),
                    events_pb2.RunPaused(attempt=0, reason="asha"),
                ), logged
            else:
                assert logged == events_pb2.RunResumed(reason="asha", rung=d.action.rung)
        else:
            check_recorded(d, by_id)
    actions = [d.action for d in derived]
    assert any(isinstance(a, PauseRun) for a in actions) and any(isinstance(a, ResumeRun) for a in actions)

    states = {r.id: r.state for r in runs}
    assert len(states) == len(QUALITIES)
    not_promoted = {a.run_id for a in actions if isinstance(a, StopRun)}
    assert not_promoted and all(a.reason == NOT_PROMOTED for a in actions if isinstance(a, StopRun))
    assert all(states[r] == RS.RUN_STATE_STOPPED_EARLY for r in not_promoted)
    assert {r for r, s in states.items() if s == RS.RUN_STATE_COMPLETED} == set(states) - not_promoted
    assert set(states) - not_promoted, "some run was promoted to the end"

    # Paused attempts end at RunPaused (their GPUs freed); no attempt of a run overlaps another.
    held = attempts(stack.database_url)
    assert any(a.outcome == "RunPaused" for a in held)
    assert all(a.end is not None for a in held)
    by_run: dict[str, list[int]] = {}
    for a in held:
        by_run.setdefault(a.run_id, []).append(a.attempt)
    assert any(len(n) > 1 for n in by_run.values()), "a promoted run trained in a new attempt"
