"""Scheduling throughput: 10,000 queued one-GPU runs over 8 simulated agents of 8 GPUs each.

A real `runyard server` (PostgreSQL, a private nats-server) holds the backlog:
ten experiments of 1,000 runs, created before any agent exists. Then eight
simulated agents start in this process: each registers 8 GPUs, heartbeats,
pulls its WorkAssignments from JetStream exactly as `runyard agent` does, and
reports staging, started, uploading and completed for each at once (with the
bootstrap agent key). Everything between (admission, placement, RunAssigned,
dispatch, ingest of the reports, read models) is the real server.

Prints JSON: runs dispatched per second (WorkAssignments reaching agents),
runs completed per second end to end, the server's own decision figures (its
"scheduler stats" log line) and the pure policy's decision time per run over
a 10,000-run queue measured here (goal: under 1 ms a decision; issue 12: at least 500 runs
dispatched a second end to end, `goal_dispatch_met`).

    .venv/bin/python bench/scheduling.py [--runs 10000] [--agents 8] [--gpus 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from runyard import bus
from runyard.agent.reporter import Reporter
from runyard.server.domain.scheduling import AccountState, AgentState, Gpu, QueuedRun, schedule
from runyard.v1 import (
    admin_service_pb2,
    agent_pb2,
    common_pb2,
    events_pb2,
    experiment_service_pb2,
    resources_pb2,
)
from tests.support.services import NatsServer, postgres_database
from tests.support.stack import Stack, Stubs

PER_EXPERIMENT = 1000
# Issue 12: WorkAssignments reaching agents, per second, end to end.
GOAL_DISPATCHED_PER_S = 500


def manifest(index: int, runs: int) -> str:
    return (
        f"name: backlog-{index}\n"
        "framework: {name: python}\n"
        'command: "true"\n'
        f"results: s3://results/backlog-{index}\n"
        "resources: {gpus: 1}\n"
        f"hyperparameters:\n  i: {{type: int, min: 1, max: {runs}}}\n"
        "search: {method: grid}\n"
    )


class FakeAgent:
    """An agent that takes every WorkAssignment and reports it done at once."""

    def __init__(self, agent_id: str, gpus: int, nats_url: str, api_key: str) -> None:
        self.agent_id = agent_id
        self.gpus = gpus
        self.nats_url = nats_url
        self.api_key = api_key
        self.held: set[str] = set()
        self.received = 0
        self.last_received = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        nc = await nats.connect(self.nats_url)
        js = nc.jetstream()
        reporter = Reporter(nc, js, self.agent_id, api_key=self.api_key)
        await reporter.registered(
            events_pb2.AgentRegistered(
                agent_id=self.agent_id,
                hostname=self.agent_id,
                slots=self.gpus,
                gpu_ids=[f"GPU-{self.agent_id}-{i}" for i in range(self.gpus)],
                labels={"gpu_model": "H100"},
                frameworks=[common_pb2.Framework(name="python")],
                gpus=[
                    common_pb2.GpuDevice(index=i, uuid=f"GPU-{self.agent_id}-{i}", model="H100")
                    for i in range(self.gpus)
                ],
            )
        )
        durable = bus.agent_durable(self.agent_id)
        sub = await js.pull_subscribe(
            bus.work_subject(self.agent_id),
            durable=durable,
            stream=bus.WORK_STREAM,
            config=ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                filter_subject=bus.work_subject(self.agent_id),
            ),
        )
        beats = asyncio.create_task(self._heartbeats(nc, stop))
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                free = self.gpus - len(self.held)
                if free <= 0:
                    await asyncio.sleep(0.001)
                    continue
                try:
                    msgs = await sub.fetch(free, timeout=0.5)
                except Exception:
                    continue
                for msg in msgs:
                    await msg.ack()
                    work = agent_pb2.WorkAssignment.FromString(msg.data)
                    key = f"{work.run_id}:{work.attempt}"
                    if key in self.held:
                        continue
                    self.held.add(key)
                    self.received += 1
                    self.last_received = time.perf_counter()
                    task = asyncio.create_task(self._complete(reporter, work, key))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            beats.cancel()
            for task in list(tasks):
                task.cancel()
            await nc.close()

    async def _complete(self, reporter: Reporter, work: agent_pb2.WorkAssignment, key: str) -> None:
        reports = reporter.for_attempt(work.run_id, work.attempt)
        try:
            await reports.staging()
            await reports.started()
            await reports.uploading(0)
            await reports.completed(work.spec.results_uri)
        finally:
            self.held.discard(key)

    async def _heartbeats(self, nc: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            beat = agent_pb2.AgentHeartbeat(
                agent_id=self.agent_id, attempts=sorted(self.held), time_us=time.time_ns() // 1000
            )
            # With its key: the control plane counts only heartbeats of a key bound to the agent.
            headers = {"Authorization": f"Bearer {self.api_key}"}
            await nc.publish(bus.heartbeat_subject(self.agent_id), beat.SerializeToString(), headers=headers)
            await asyncio.sleep(1.0)


async def drive(agents: list[FakeAgent], stubs: Stubs, experiment_ids: list[str], runs: int) -> dict[str, float]:
    stop = asyncio.Event()
    started = time.perf_counter()
    tasks = [asyncio.create_task(a.run(stop)) for a in agents]
    completed_at = 0.0
    deadline = started + 1800
    try:
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.5)
            if sum(a.received for a in agents) < runs:
                continue
            done = 0
            for experiment_id in experiment_ids:
                exp = await asyncio.to_thread(
                    stubs.experiments.GetExperiment,
                    experiment_service_pb2.GetExperimentRequest(experiment_id=experiment_id),
                    timeout=30,
                )
                done += exp.experiment.runs_by_state.get("RUN_STATE_COMPLETED", 0)
            if done >= runs:
                completed_at = time.perf_counter()
                break
        else:
            raise RuntimeError(f"only {sum(a.received for a in agents)} of {runs} runs reached an agent")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    last_dispatch = max(a.last_received for a in agents)
    return {
        "dispatch_seconds": round(last_dispatch - started, 2),
        "runs_dispatched_per_s": round(runs / (last_dispatch - started), 1),
        "end_to_end_seconds": round(completed_at - started, 2),
        "runs_completed_per_s": round(runs / (completed_at - started), 1),
    }


def server_stats(log_text: str) -> dict[str, Any]:
    """The last "scheduler stats" line the leading server logged."""
    found: dict[str, Any] = {}
    for line in log_text.splitlines():
        if '"scheduler stats"' in line:
            found = json.loads(line)
    return {k: v for k, v in found.items() if k not in ("event", "level", "timestamp")}


def pure_policy(runs: int, agents: int, gpus: int) -> dict[str, float]:
    """The policy alone over a full queue: every decision looks at the whole queue."""
    devices = {f"agent-{a}": tuple(Gpu(f"GPU-{a}-{i}", "H100") for i in range(gpus)) for a in range(agents)}
    fleet = [AgentState(agent_id, gpus, gs) for agent_id, gs in devices.items()]
    queue = [QueuedRun(f"run-{i}", "default", 1, queued_position=i) for i in range(runs)]
    plans = {"default": AccountState("default", gpu_quota=agents * gpus)}
    timings = []
    for _ in range(7):
        t = time.perf_counter()
        decision = schedule(queue, fleet, plans)
        timings.append(time.perf_counter() - t)
    assert len(decision.placements) == min(runs, agents * gpus)
    cycle = statistics.median(timings)
    return {"queued_runs": runs, "cycle_ms": round(cycle * 1e3, 2), "us_per_run": round(cycle / runs * 1e6, 2)}


def measure(runs: int, agent_count: int, gpus: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as url:
        root = Path(tmp)
        nats_server = NatsServer(root / "nats").start()
        stack = Stack(root=root, database_url=url, nats_url=nats_server.url, storage_root=(root / "objects").as_uri())
        try:
            stack.start_server()
            with stack.channel() as channel:
                stubs = Stubs(channel)
                stubs.admin.SetQuota(
                    admin_service_pb2.SetQuotaRequest(account_id="default", gpu_quota=agent_count * gpus), timeout=30
                )
                experiment_ids = []
                created = time.perf_counter()
                left = runs
                index = 0
                while left > 0:
                    n = min(PER_EXPERIMENT, left)
                    exp = stubs.experiments.CreateExperiment(
                        experiment_service_pb2.CreateExperimentRequest(manifest_yaml=manifest(index, n)), timeout=300
                    ).experiment
                    assert exp.state == resources_pb2.EXPERIMENT_STATE_ACTIVE
                    experiment_ids.append(exp.id)
                    left -= n
                    index += 1
                create_seconds = time.perf_counter() - created
                agents = [
                    FakeAgent(f"sim-{i}", gpus, nats_server.url, stack.key_for(f"sim-{i}")) for i in range(agent_count)
                ]
                figures = asyncio.run(drive(agents, stubs, experiment_ids, runs))
            stack.stop()
            return {
                "runs": runs,
                "agents": agent_count,
                "gpus_per_agent": gpus,
                "create_seconds": round(create_seconds, 2),
                **figures,
                "server_decisions": server_stats(stack.servers[0].output()),
            }
        finally:
            stack.stop()
            nats_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    # A SIGTERM (timeout, Ctrl-C in a wrapper) still stops the server, agents and NATS started here.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result: dict[str, Any] = {"benchmark": "scheduling_throughput", "goal_decision_us_per_run": 1000}
    result["pure_policy"] = pure_policy(args.runs, args.agents, args.gpus)
    result["end_to_end"] = measure(args.runs, args.agents, args.gpus)
    result["goal_runs_dispatched_per_s"] = GOAL_DISPATCHED_PER_S
    result["goal_dispatch_met"] = result["end_to_end"]["runs_dispatched_per_s"] >= GOAL_DISPATCHED_PER_S
    # Other work on the machine slows every step; say how busy it was.
    result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
