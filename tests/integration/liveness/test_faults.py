"""The bounded fault test of issue 9: kill -9 of the server, of an agent (back within its timeout, and
back after it) and of NATS, at seeded random moments, while one experiment of 60 short runs trains.

Then, judged from the event log and from the runs' own notes (ticker.py), never from the read models
alone: every run COMPLETED exactly once; no two attempts of one run were alive at the same time; no
GPU was held by two attempts at once; what UsageService bills equals the test's own sum over the raw
events, and again after `runyard admin rebuild`.

Short timeouts (agent 4 s) and leases (8 s) keep the whole test within about two minutes. The seed
comes from RUNYARD_FAULT_SEED (default 9) and is printed, so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from runyard.server.store import EventStore
from runyard.v1 import common_pb2, run_service_pb2, usage_service_pb2, usage_service_pb2_grpc
from tests.integration.billing.ledger import attempts_from_log, bill_by_day, total
from tests.integration.liveness.conftest import LEASE_S
from tests.integration.liveness.records import overlaps_of_a_run, read_records, shared_gpus, ticker_command
from tests.integration.liveness.test_agent_loss import wait_registered
from tests.integration.scheduling.helpers import all_ended, attempts, manifest, overlapping, submit, wait_until
from tests.support.services import NatsServer
from tests.support.stack import Proc, Stack, Stubs, cli

pytestmark = pytest.mark.integration
RS = common_pb2.RunState

RUNS = 60
AGENT_TIMEOUT_S = 4
AGENTS = {"gpu-a": "2xH100", "gpu-b": "2xH100"}


def completed(stubs: Stubs, experiment_id: str) -> int:
    request = run_service_pb2.ListRunsRequest(
        experiment_id=experiment_id, states=[RS.RUN_STATE_COMPLETED], page_size=1000
    )
    try:
        return len(stubs.runs.ListRuns(request, timeout=5).runs)
    except Exception:  # the server is down for a moment: nothing known
        return -1


def usage_matches_the_log(stack: Stack, channel: grpc.Channel) -> None:
    usage = usage_service_pb2_grpc.UsageServiceStub(channel)
    store = EventStore.open(stack.database_url, migrate=False, pool_size=1, max_overflow=0)
    try:
        held = attempts_from_log(store)
    finally:
        store.close()
    assert held and all(h.end is not None for h in held.values()), "every attempt ended in the log"

    def billed() -> bool:
        listed = usage.ListRunUsage(usage_service_pb2.ListRunUsageRequest(page_size=1000), timeout=10).attempts
        return len(listed) == len(held) and all(a.HasField("ended_at") for a in listed)

    wait_until("the usage projection to close every attempt", billed, timeout=30, stack=stack)
    until = datetime.now(UTC)
    reply = usage.GetUsage(usage_service_pb2.GetUsageRequest(), timeout=10)
    assert reply.total_gpu_seconds == total(held, until) / 1e6
    by_day = {(r.account_id, r.period, r.gpu_model): r.gpu_seconds for r in reply.rows}
    assert by_day == {k: us / 1e6 for k, us in bill_by_day(held, until).items()}


def test_kill_9_of_server_agents_and_nats_never_loses_doubles_or_misbills_a_run(
    stack: Stack, tmp_path: Path, nats_server: NatsServer
) -> None:
    seed = int(os.environ.get("RUNYARD_FAULT_SEED", "9"))
    rng = random.Random(seed)
    print(f"fault seed {seed}")
    records = tmp_path / "records.txt"
    began = time.monotonic()
    stack.start_server(agent_timeout=str(AGENT_TIMEOUT_S))
    # Unsandboxed: the ticker (a file of the tests) writes its notes, with its host pid, outside its run's folders.
    agent_flags = {name: ("--gpus", gpus, "--cancel-grace", "1", "--sandbox", "none") for name, gpus in AGENTS.items()}
    agents: dict[str, Proc] = {name: stack.start_agent(name, 2, *flags) for name, flags in agent_flags.items()}

    def kill_server() -> None:
        stack.servers[-1].stop(signal.SIGKILL)
        time.sleep(rng.uniform(0.2, 1.5))
        stack.start_server(port=stack.port, agent_timeout=str(AGENT_TIMEOUT_S))

    def kill_agent(name: str, down_s: float) -> Callable[[], None]:
        def fault() -> None:
            agents[name].stop(signal.SIGKILL)
            time.sleep(down_s)
            agents[name] = stack.start_agent(name, 2, *agent_flags[name])

        return fault

    def kill_nats() -> None:
        assert nats_server.proc is not None
        nats_server.proc.kill()
        nats_server.proc.wait()
        nats_server.proc = None
        time.sleep(rng.uniform(0.2, 1.5))
        nats_server.start()

    faults: list[tuple[str, Callable[[], None]]] = [
        ("server", kill_server),
        ("agent gpu-a, back within its timeout", kill_agent("gpu-a", rng.uniform(0.2, AGENT_TIMEOUT_S - 2))),
        ("agent gpu-b, back after its timeout", kill_agent("gpu-b", rng.uniform(AGENT_TIMEOUT_S + 1, LEASE_S + 2))),
        ("nats", kill_nats),
    ]
    rng.shuffle(faults)
    # The moments: after a random number of completed runs, spread over the experiment, plus a random delay.
    moments = sorted(rng.sample(range(3, RUNS - 10), len(faults)))

    with stack.channel() as channel:
        stubs = Stubs(channel)
        wait_registered(stubs, list(AGENTS), stack)
        exp = submit(
            stubs,
            manifest("faults", ticker_command(1.0, records), gpus=1, runs=RUNS, extra="max_restarts: 10\n"),
        )
        for (what, fault), moment in zip(faults, moments, strict=True):
            wait_until(
                f"{moment} runs to complete before killing the {what}",
                lambda m=moment: completed(stubs, exp.id) >= m,  # type: ignore[misc]
                timeout=90,
                stack=stack,
            )
            time.sleep(rng.uniform(0.0, 0.5))
            print(f"kill -9 {what} after {time.monotonic() - began:.1f}s")
            fault()
        wait_until("the experiment to end", lambda: all_ended(stubs, [exp.id]), timeout=120, stack=stack)

        runs = stubs.runs.ListRuns(run_service_pb2.ListRunsRequest(experiment_id=exp.id, page_size=1000)).runs
        assert len(runs) == RUNS
        assert Counter(RS.Name(r.state) for r in runs) == {"RUN_STATE_COMPLETED": RUNS}

        # The log: each run completed exactly once, and no GPU was held by two attempts at once.
        held = attempts(stack.database_url)  # raises if an attempt was assigned twice
        done = Counter(a.run_id for a in held if a.outcome == "RunCompleted")
        assert done == {r.id: 1 for r in runs}
        for i, a in enumerate(held):
            for b in held[i + 1 :]:
                if a.agent_id == b.agent_id and overlapping(a, b):
                    assert not set(a.gpu_ids) & set(b.gpu_ids), f"{a.run_id} and {b.run_id} held a GPU at once"

        # The runs themselves: no run alive twice at once, no GPU shared, the completed attempt ran to its end.
        lived = read_records(records)
        assert not overlaps_of_a_run(lived), overlaps_of_a_run(lived)
        assert not shared_gpus(lived), shared_gpus(lived)
        for a in held:
            if a.outcome == "RunCompleted":
                assert lived[(a.run_id, a.attempt)].ended, f"{a.run_id}:{a.attempt} completed without ending"

        usage_matches_the_log(stack, channel)
        rebuilt = subprocess.run(
            cli("admin", "rebuild"),
            env={**stack.env(), "RUNYARD_ENDPOINT": stack.endpoint, "RUNYARD_API_KEY": stack.admin_key},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rebuilt.returncode == 0, rebuilt.stderr
        usage_matches_the_log(stack, channel)
    print(f"fault test took {time.monotonic() - began:.1f}s; attempts: {len(held)} for {RUNS} runs")
