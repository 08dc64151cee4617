"""Whole-host placement of multi-GPU runs, exact CUDA_VISIBLE_DEVICES, and refusal of what never fits."""

from __future__ import annotations

import itertools
import re

import grpc
import pytest

from runyard.v1 import admin_service_pb2, run_service_pb2
from tests.integration.api.helpers import code_of, details
from tests.integration.scheduling.helpers import (
    all_ended,
    attempts,
    manifest,
    overlapping,
    start_gpu_agents,
    submit,
    wait_until,
)
from tests.support.stack import Stack, Stubs

pytestmark = pytest.mark.integration

PRINT_GPUS = 'echo "cvd=$CUDA_VISIBLE_DEVICES"; sleep 0.5'


def test_runs_get_whole_hosts_and_exactly_their_gpus_and_impossible_runs_are_refused(stack: Stack) -> None:
    stack.start_server()
    with stack.channel() as channel:
        stubs = Stubs(channel)
        start_gpu_agents(stack, stubs, {"gpu-a": "2xH100", "gpu-b": "2xH100"})

        agents = stubs.admin.ListAgents(admin_service_pb2.ListAgentsRequest(), timeout=10).agents
        for agent in agents:
            assert [g.model for g in agent.gpus] == ["H100", "H100"]
            assert list(agent.gpu_ids) == [f"GPU-{agent.id}-0", f"GPU-{agent.id}-1"]
            assert agent.labels["gpu_model"] == "H100" and agent.slots == 2

        # More GPUs than any host has, or a model nobody has: refused at submit, saying why.
        with pytest.raises(grpc.RpcError) as too_big:
            submit(stubs, manifest("too-big", "true", gpus=4))
        assert code_of(too_big.value) == grpc.StatusCode.FAILED_PRECONDITION
        assert "4 GPUs" in details(too_big.value) and "largest agent has 2 GPUs" in details(too_big.value)
        with pytest.raises(grpc.RpcError) as unknown:
            submit(stubs, manifest("b200", "true", gpus=1, gpu_model="B200"))
        assert code_of(unknown.value) == grpc.StatusCode.INVALID_ARGUMENT
        assert "B200" in details(unknown.value) and "H100" in details(unknown.value)

        # Two-GPU runs and one-GPU runs compete for the same four GPUs.
        pairs = submit(stubs, manifest("pairs", PRINT_GPUS, gpus=2, runs=3))
        singles = submit(stubs, manifest("singles", PRINT_GPUS, gpus=1, runs=4))
        wait_until("every run to end", lambda: all_ended(stubs, [pairs.id, singles.id]), timeout=120, stack=stack)

        held = attempts(stack.database_url)
        assert len(held) == 7 and all(a.outcome == "RunCompleted" for a in held)
        for a in held:
            assert len(a.gpu_ids) == a.gpus, "a run gets exactly the GPUs it asked for"
            assert all(g.startswith(f"GPU-{a.agent_id}-") for g in a.gpu_ids), "all of a run's GPUs on its host"
            logs = stubs.runs.GetRunLogs(run_service_pb2.GetRunLogsRequest(run_id=a.run_id), timeout=10).lines
            [seen] = [m.group(1) for line in logs if (m := re.fullmatch(r"cvd=(.*)", line.text))]
            assert seen.split(",") == list(a.gpu_ids), "CUDA_VISIBLE_DEVICES names exactly the run's GPUs"
        for a, b in itertools.combinations(held, 2):
            if a.agent_id == b.agent_id and overlapping(a, b):
                assert not set(a.gpu_ids) & set(b.gpu_ids), f"{a.run_id} and {b.run_id} shared a GPU"


def test_a_draining_agent_gets_no_new_runs(stack: Stack) -> None:
    stack.start_server()
    with stack.channel() as channel:
        stubs = Stubs(channel)
        start_gpu_agents(stack, stubs, {"gpu-a": "2xH100", "gpu-b": "2xH100"})
        drained = stubs.admin.DrainAgent(admin_service_pb2.DrainAgentRequest(agent_id="gpu-b"), timeout=10).agent
        assert drained.draining
        exp = submit(stubs, manifest("drained", "sleep 0.3", gpus=1, runs=6))
        wait_until("every run to end", lambda: all_ended(stubs, [exp.id]), timeout=120, stack=stack)
    held = attempts(stack.database_url)
    assert len(held) == 6 and {a.agent_id for a in held} == {"gpu-a"}, "the draining agent got work"
