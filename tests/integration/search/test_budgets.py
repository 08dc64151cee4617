"""An experiment's budgets and its cancel, on a real server and agent: what stops, when, and how it ends.

Checked against the event log (who held GPUs until when), not only the read models.
"""

from __future__ import annotations

import textwrap

import pytest

from runyard.v1 import common_pb2, experiment_service_pb2, resources_pb2, run_service_pb2
from tests.integration.scheduling.helpers import attempts, experiment, start_gpu_agents, submit, wait_until
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration
RS = common_pb2.RunState
ES = resources_pb2.ExperimentState


def manifest(name: str, runs: int, search: str, gpus: int = 1) -> str:
    return textwrap.dedent(
        f"""\
        name: {name}
        framework: {{name: python}}
        command: sleep 60
        results: s3://results/{name}
        resources: {{gpus: {gpus}}}
        hyperparameters:
          i: {{type: int, min: 1, max: {runs}}}
        search: {{method: grid, {search}}}
        """
    )


def runs_of(stubs: Stubs, experiment_id: str) -> list[resources_pb2.Run]:
    return list(stubs.runs.ListRuns(run_service_pb2.ListRunsRequest(experiment_id=experiment_id), timeout=10).runs)


def ended(stubs: Stubs, experiment_id: str) -> resources_pb2.Experiment | None:
    exp = experiment(stubs, experiment_id)
    return exp if exp.state != ES.EXPERIMENT_STATE_ACTIVE else None


def test_a_time_budget_stops_running_runs_and_the_queue(stack: Stack) -> None:
    stack.start_server()
    with stack.channel() as channel:
        stubs = Stubs(channel)
        start_gpu_agents(stack, stubs, {"gpu-a": "2xH100"})
        exp = submit(stubs, manifest("time-budget", 5, "max_time: 4s"))
        assert exp.run_count == 5, "a plain experiment with a budget still gets every run at submit"
        wait_until(
            "two runs to hold the GPUs",
            lambda: sum(r.state == RS.RUN_STATE_RUNNING for r in runs_of(stubs, exp.id)) == 2,
            stack=stack,
        )
        done = wait_until("the budget to end the experiment", lambda: ended(stubs, exp.id), timeout=60, stack=stack)
        runs = runs_of(stubs, exp.id)
    assert done.state == ES.EXPERIMENT_STATE_COMPLETED
    assert done.end_reason == "time budget of 4s spent"
    assert all(r.state == RS.RUN_STATE_STOPPED_EARLY for r in runs), [r.state for r in runs]
    # The two that ran were billed until their agent stopped them, well before their 60 s were up.
    held = attempts(stack.database_url)
    assert len(held) == 2 and all(a.outcome == "RunStoppedEarly" for a in held)
    for a in held:
        assert a.ended_at is not None
        assert (a.ended_at - a.started_at).total_seconds() < 30


def test_a_gpu_hour_budget_counts_gpus_times_seconds(stack: Stack) -> None:
    stack.start_server()
    with stack.channel() as channel:
        stubs = Stubs(channel)
        start_gpu_agents(stack, stubs, {"gpu-a": "4xH100"})
        # 2 runs of 2 GPUs: 4 GPU-seconds a second, so 0.004 GPU-hours (14.4 GPU-seconds) last about 3.6 s.
        exp = submit(stubs, manifest("gpu-budget", 3, "max_gpu_hours: 0.004, max_parallel: 2", gpus=2))
        done = wait_until("the budget to end the experiment", lambda: ended(stubs, exp.id), timeout=60, stack=stack)
        runs = runs_of(stubs, exp.id)
    assert done.end_reason == "GPU-hour budget of 0.004 spent"
    assert not done.searching
    held = attempts(stack.database_url)
    assert {a.run_id for a in held} == {r.id for r in runs if r.assigned_at.seconds}
    billed = sum(a.gpus * (a.ended_at - a.started_at).total_seconds() for a in held if a.ended_at)
    assert 14.4 <= billed < 14.4 + 4 * 10, billed  # spent, then stopped within a few seconds
    assert all(r.state == RS.RUN_STATE_STOPPED_EARLY for r in runs if r.assigned_at.seconds)
    assert len(runs) < 3 or any(not r.assigned_at.seconds for r in runs), "no run starts once the budget is spent"


def test_cancel_stops_a_searched_experiment_and_its_searcher(stack: Stack) -> None:
    stack.start_server()
    with stack.channel() as channel:
        stubs = Stubs(channel)
        start_gpu_agents(stack, stubs, {"gpu-a": "2xH100"})
        exp = submit(stubs, manifest("cancel-search", 6, "max_parallel: 2"))
        wait_until(
            "the searcher's first two runs to run",
            lambda: sum(r.state == RS.RUN_STATE_RUNNING for r in runs_of(stubs, exp.id)) == 2,
            stack=stack,
        )
        stubs.experiments.CancelExperiment(
            experiment_service_pb2.CancelExperimentRequest(experiment_id=exp.id), timeout=10
        )
        done = wait_until("the experiment to end", lambda: ended(stubs, exp.id), timeout=60, stack=stack)
        runs = runs_of(stubs, exp.id)
    assert done.state == ES.EXPERIMENT_STATE_CANCELED
    assert done.end_reason == "canceled" and not done.searching
    assert len(runs) == 2, "no trial starts after the cancel"
    assert all(r.state == RS.RUN_STATE_CANCELED for r in runs)
