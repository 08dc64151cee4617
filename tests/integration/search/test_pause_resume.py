"""Pause and resume of experiments through gRPC, with a real server and agents.

Pausing a running experiment stops its runs on their agents (the agent is asked
to stop them and reports them stopped: PAUSED) and holds its queued ones at
once; a paused run holds no GPUs and is billed nothing while paused. Resuming
queues them again and they finish. A searched experiment keeps every decision
of its searcher across a pause, a control-plane kill -9 while paused, and the
resume: the log holds exactly what an uninterrupted searcher replaying it derives.
"""

from __future__ import annotations

import json
import shlex
import signal
import textwrap
from datetime import datetime

import grpc
import pytest

from runyard.server.domain.events import decode
from runyard.server.domain.searchers import Complete, CreateTrial
from runyard.server.search_driver import DECISION_TYPES, decision_event_id
from runyard.server.store import EventStore
from runyard.v1 import (
    admin_service_pb2,
    common_pb2,
    events_pb2,
    experiment_service_pb2,
    resources_pb2,
    run_service_pb2,
    usage_service_pb2,
    usage_service_pb2_grpc,
)
from tests.integration.scheduling.helpers import (
    attempts,
    create_account,
    experiment,
    start_gpu_agents,
    stubs_at,
    submit,
    wait_until,
)
from tests.integration.search.test_restart_decisions import check_recorded, read_log
from tests.support.services import free_port
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration
RS = common_pb2.RunState
ES = resources_pb2.ExperimentState

# Eight epochs of 0.5 s: long enough to pause mid-run, short enough to finish after the resume.
TRAIN = (
    "import sys, time; q = float(sys.argv[1]); "
    "[time.sleep(0.5) or print(f'epoch {e} val={q * (1 - 0.5 ** e):.6f}', flush=True) for e in range(1, 9)]"
)


def manifest(name: str, qualities: list[float], search: str = "") -> str:
    return textwrap.dedent(
        f"""\
        name: {name}
        framework: {{name: python}}
        command: {json.dumps(f"python -u -c {shlex.quote(TRAIN)} ${{q}}")}
        results: s3://results/{name}
        resources: {{gpus: 1}}
        hyperparameters:
          q: {{type: categorical, values: {qualities}}}
        search:
          method: grid
          metric: val
          goal: maximize
        {search}
        metrics:
          patterns: ['epoch (?P<step>\\d+) val=(?P<val>[0-9.]+)']
        """
    )


def runs_of(stubs: Stubs, experiment_id: str) -> list[resources_pb2.Run]:
    request = run_service_pb2.ListRunsRequest(experiment_id=experiment_id)
    return sorted(stubs.runs.ListRuns(request, timeout=10).runs, key=lambda r: r.index)


def pause(stubs: Stubs, experiment_id: str) -> resources_pb2.Experiment:
    request = experiment_service_pb2.PauseExperimentRequest(experiment_id=experiment_id, reason="test")
    return stubs.experiments.PauseExperiment(request, timeout=30).experiment


def resume(stubs: Stubs, experiment_id: str) -> resources_pb2.Experiment:
    request = experiment_service_pb2.ResumeExperimentRequest(experiment_id=experiment_id)
    return stubs.experiments.ResumeExperiment(request, timeout=30).experiment


def paused_intervals(database_url: str) -> dict[str, list[tuple[datetime, datetime | None]]]:
    """Per run, each (RunPaused, RunResumed) interval from the log (None: not resumed)."""
    store = EventStore.open(database_url, migrate=False, pool_size=1, max_overflow=0)
    out: dict[str, list[tuple[datetime, datetime | None]]] = {}
    try:
        after = 0
        while batch := store.read_all(after, 1000):
            for e in batch:
                after = e.position
                if not e.stream_id.startswith("run:"):
                    continue
                msg = decode(e.type, e.data)
                run_id = e.stream_id.removeprefix("run:")
                if isinstance(msg, events_pb2.RunPaused):
                    out.setdefault(run_id, []).append((e.recorded_at, None))
                elif isinstance(msg, events_pb2.RunResumed):
                    start, _ = out[run_id][-1]
                    out[run_id][-1] = (start, e.recorded_at)
    finally:
        store.close()
    return out


def test_pausing_stops_running_runs_holds_queued_ones_and_resume_finishes_them_unbilled_while_paused(
    stack: Stack,
) -> None:
    stack.start_server()
    with stack.channel() as channel:
        admin = Stubs(channel)
        start_gpu_agents(stack, admin, {"gpu-a": "2xH100"})
        exp = submit(admin, manifest("pause-plain", [0.5, 0.9, 0.3]))
        assert exp.run_count == 3

        def two_running() -> bool:
            states = [r.state for r in runs_of(admin, exp.id)]
            return states.count(RS.RUN_STATE_RUNNING) == 2 and states.count(RS.RUN_STATE_QUEUED) == 1

        wait_until("two runs to run and one to wait", two_running, stack=stack)
        queued = next(r.id for r in runs_of(admin, exp.id) if r.state == RS.RUN_STATE_QUEUED)
        paused = pause(admin, exp.id)
        assert paused.state == ES.EXPERIMENT_STATE_PAUSED
        assert {r.id: r.state for r in runs_of(admin, exp.id)}[queued] == RS.RUN_STATE_PAUSED, "paused at once"

        def all_paused() -> list[resources_pb2.Run] | None:
            runs = runs_of(admin, exp.id)
            return runs if all(r.state == RS.RUN_STATE_PAUSED for r in runs) else None

        runs = wait_until("the agent to stop the running runs: all PAUSED", all_paused, stack=stack)
        assert all(not r.agent_id and not r.gpu_ids for r in runs), "a paused run holds no GPUs"
        assert experiment(admin, exp.id).state == ES.EXPERIMENT_STATE_PAUSED
        assert pause(admin, exp.id).state == ES.EXPERIMENT_STATE_PAUSED, "pausing again: idempotent"
        # While paused nothing is placed: the agent's GPUs are free and nothing of it is queued.
        agents = admin.admin.ListAgents(admin_service_pb2.ListAgentsRequest(), timeout=10).agents
        assert all(not a.run_ids for a in agents)

        resumed = resume(admin, exp.id)
        assert resumed.state == ES.EXPERIMENT_STATE_ACTIVE
        wait_until(
            "the resumed runs to finish",
            lambda: experiment(admin, exp.id).state == ES.EXPERIMENT_STATE_COMPLETED,
            timeout=120,
            stack=stack,
        )
        assert [r.state for r in runs_of(admin, exp.id)] == [RS.RUN_STATE_COMPLETED] * 3

        # Billing: every attempt ends at its RunPaused and the next starts after the resume; paused time unbilled.
        usage = usage_service_pb2_grpc.UsageServiceStub(channel)
        billed = list(
            usage.ListRunUsage(usage_service_pb2.ListRunUsageRequest(experiment_id=exp.id), timeout=10).attempts
        )
    held = attempts(stack.database_url)
    assert sorted((a.run_id, a.attempt) for a in held) == sorted((b.run_id, b.attempt) for b in billed)
    outcomes = {(a.run_id, a.attempt): a.outcome for a in held}
    assert sorted(outcomes.values()).count("RunPaused") == 2, "the two running attempts ended PAUSED"
    pauses = paused_intervals(stack.database_url)
    assert set(pauses) == {r.id for r in runs}
    for b in billed:
        assert b.HasField("ended_at")
        start, end = b.started_at.ToDatetime(), b.ended_at.ToDatetime()
        for paused_at, resumed_at in pauses[b.run_id]:
            assert resumed_at is not None
            p, q = paused_at.replace(tzinfo=None), resumed_at.replace(tzinfo=None)
            assert end <= p or start >= q, f"attempt {b.attempt} of {b.run_id} is billed while paused"
        assert b.gpu_seconds == pytest.approx((end - start).total_seconds(), abs=1e-3)


def test_a_paused_search_keeps_every_decision_across_a_kill_and_the_resume(stack: Stack) -> None:
    qualities = [0.5, 0.9, 0.3, 0.8, 0.6]
    text = manifest("pause-search", qualities, search="  max_parallel: 2")
    first = stack.start_server()
    with stack.channel() as channel:
        stubs = Stubs(channel)
        start_gpu_agents(stack, stubs, {"gpu-a": "2xH100"})
        exp = submit(stubs, text)
        assert exp.run_count == 0, "a searched experiment starts empty"

        def two_running() -> bool:
            return [r.state for r in runs_of(stubs, exp.id)].count(RS.RUN_STATE_RUNNING) == 2

        wait_until("the searcher's first two trials to run", two_running, timeout=60, stack=stack)
        pause(stubs, exp.id)
        wait_until(
            "the running trials to pause",
            lambda: all(r.state == RS.RUN_STATE_PAUSED for r in runs_of(stubs, exp.id)),
            stack=stack,
        )
        trials_when_paused = len(runs_of(stubs, exp.id))
    first.stop(signal.SIGKILL)

    port = free_port()
    stack.start_server(port=port)
    channel, stubs = stubs_at(f"127.0.0.1:{port}", stack.admin_key)
    with channel:
        # The new server replays the search: paused runs are alive, so no trial is added for them.
        def shown_paused() -> resources_pb2.Experiment | None:
            got = experiment(stubs, exp.id)
            return got if got.state == ES.EXPERIMENT_STATE_PAUSED else None

        got = wait_until("the restarted server to show the experiment PAUSED", shown_paused, stack=stack)
        assert got.run_count == trials_when_paused
        assert all(r.state == RS.RUN_STATE_PAUSED for r in runs_of(stubs, exp.id))
        resume(stubs, exp.id)
        wait_until(
            "the search to complete after the resume",
            lambda: experiment(stubs, exp.id).state == ES.EXPERIMENT_STATE_COMPLETED,
            timeout=150,
            stack=stack,
        )
        runs = runs_of(stubs, exp.id)
    assert [r.state for r in runs] == [RS.RUN_STATE_COMPLETED] * len(qualities)

    derived, by_id = read_log(stack.database_url)
    for d in derived:
        check_recorded(d, by_id)
    trials = [d.action for d in derived if isinstance(d.action, CreateTrial)]
    assert [t.hyperparameters["q"] for t in trials] == qualities, "every trial of the grid, in order, once"
    expected = {decision_event_id(d.experiment_id, d.number) for d in derived}
    kinds = tuple(t for t in DECISION_TYPES if t is not events_pb2.RunStoppedEarly)
    extra = [m.msg for i, m in by_id.items() if isinstance(m.msg, kinds) and i not in expected]
    assert not extra, f"the log holds decisions an uninterrupted searcher does not make: {extra}"
    assert sum(isinstance(d.action, Complete) for d in derived) == 1
    paused_attempts = [a for a in attempts(stack.database_url) if a.outcome == "RunPaused"]
    assert len(paused_attempts) == 2, "the two running trials were paused on their agent, then ran again"


def test_another_accounts_experiment_is_not_found(stack: Stack) -> None:
    stack.start_server()
    with stack.channel() as channel:
        admin = Stubs(channel)
        key = create_account(admin, "other", gpu_quota=1)
        exp = submit(admin, manifest("pause-owned", [0.5]))
    channel, other = stubs_at(stack.endpoint, key)
    with channel:
        for call in (pause, resume):
            with pytest.raises(grpc.RpcError) as caught:
                call(other, exp.id)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert exp.id in (caught.value.details() or "")
