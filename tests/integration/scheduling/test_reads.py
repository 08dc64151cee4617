"""What the scheduler and the queue explainer read from the read models (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from runyard.server.app.aggregates import EXPERIMENT, RUN
from runyard.server.app.bus import MessageBus
from runyard.server.app.commands import ApplyAgentReport, AssignRun, AssignRuns, SubmitExperiment
from runyard.server.domain.errors import DomainError
from runyard.server.projections.runner import ProjectionRunner
from runyard.server.queries.queue_explainer import QueueExplainer
from runyard.server.queries.scheduling import SchedulingReads
from runyard.server.store import EventStore
from runyard.v1 import agent_pb2, common_pb2, events_pb2
from tests.integration.scheduling.helpers import manifest

pytestmark = pytest.mark.integration


def test_a_cycle_reads_each_accounts_queue_head_and_the_explainer_the_whole_queue(store: EventStore) -> None:
    bus = MessageBus(store)
    projections = ProjectionRunner(store)
    bus.execute(SubmitExperiment("a", manifest("low", "true", gpus=1, runs=3)))
    bus.execute(SubmitExperiment("a", manifest("high", "true", gpus=1, runs=2, extra="priority: 5\n")))
    bus.execute(SubmitExperiment("b", manifest("b", "true", gpus=2, runs=3, gpu_model="H100")))
    agent = events_pb2.AgentRegistered(
        agent_id="gpu-1",
        hostname="h",
        slots=1,
        gpu_ids=["GPU-gpu-1-0"],
        frameworks=[common_pb2.Framework(name="python")],
        gpus=[common_pb2.GpuDevice(index=0, uuid="GPU-gpu-1-0", model="H100")],
    )
    bus.execute(ApplyAgentReport(agent_pb2.AgentReport(event_id="reg-1", agent_id="gpu-1", registered=agent)))
    projections.catch_up()
    reads = SchedulingReads(store.engine)

    head = reads.snapshot(None, per_account=2)
    by_account: dict[str, list[int]] = {}
    for run in head.queue:
        by_account.setdefault(run.account_id, []).append(run.priority)
    assert by_account == {"a": [5, 5], "b": [0, 0]}, "the two highest-priority runs of each account"
    b_runs = [r for r in head.queue if r.account_id == "b"]
    assert all(r.gpus == 2 and r.gpu_model == "H100" and r.framework == "python" for r in b_runs)
    assert len(reads.snapshot(None).queue) == 8
    assert [a.agent_id for a in head.agents] == ["gpu-1"] and head.agents[0].gpus[0].model == "H100"

    explainer = QueueExplainer(reads, lambda agent_id: True, lambda: projections.position)
    told = {r.run_id: (r.account_id, explainer.status(r.run_id)) for r in reads.snapshot(None).queue}
    for account, status in told.values():
        assert status is not None
        if account == "b":  # two GPUs on one agent, but the only agent has one
            assert "2 GPUs" in status.reason and "largest agent has 1 GPU" in status.reason
    assert sorted(s.position for a, s in told.values() if a == "a" and s is not None) == [1, 1, 2, 3, 4]


def test_a_cycles_assignments_commit_together_or_not_at_all(store: EventStore) -> None:
    bus = MessageBus(store)
    experiment_id = bus.execute(SubmitExperiment("a", manifest("three", "true", gpus=1, runs=3))).experiment_id
    run_ids = list(bus.load(EXPERIMENT, experiment_id).run_ids)
    first = bus.execute(
        AssignRuns(
            [
                AssignRun(run_ids[0], "gpu-1", ["GPU-gpu-1-0"], "H100"),
                AssignRun(run_ids[1], "gpu-1", ["GPU-gpu-1-1"], "H100"),
            ]
        )
    )
    assert [type(o.events[0]).__name__ for o in first] == ["RunAssigned", "RunAssigned"]
    assert bus.load(RUN, run_ids[0]).gpu_ids == ("GPU-gpu-1-0",)

    # One of them is no longer QUEUED: nothing of the batch is stored.
    with pytest.raises(DomainError):
        bus.execute(
            AssignRuns(
                [
                    AssignRun(run_ids[2], "gpu-2", ["GPU-gpu-2-0"], "H100"),
                    AssignRun(run_ids[0], "gpu-2", ["GPU-gpu-2-1"], "H100"),
                ]
            )
        )
    assert bus.load(RUN, run_ids[2]).attempt == 0
