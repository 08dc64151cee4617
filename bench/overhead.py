"""Bookkeeping overhead: N runs of a 1-second command on K GPU slots, against the ideal N/K seconds.

The same test Ray Tune publishes (14% overhead there; goal here, issue 12: under 2% for 480 runs on 8 slots).
A real `runyard server` (PostgreSQL, a private nats-server) and real
`runyard agent` processes with declared GPUs (`--gpus 4xH100`) run one
experiment of N runs of `sleep 1`, one GPU each. Wall time is read from the
event log: from ExperimentCreated to the last RunCompleted. Also reported,
per run on average: assignment to command start (dispatch + staging), the
command (1 s + process start), exit to completion (upload), a GPU's idle
gap between one run's completion and the next assignment of that GPU, and a
GPU's turn (one assignment to its next: the 1 s plus all the bookkeeping).
`overhead_ratio` is checked against `goal_overhead_ratio` (0.02) in `goal_met`.
`--keep-logs DIR` keeps the server and agent logs and every event's time
(events.tsv) for a closer look.

`--seconds S` makes each run `sleep S` (the ideal is then N/K*S); `--runtime container` runs the
agents with `--runtime container` on a podman system service of the benchmark's own (each run in
its container of the python framework image; the declared GPUs attach no device).

    .venv/bin/python bench/overhead.py [--runs 480] [--agents 2] [--gpus 4] [--seconds 1]
        [--runtime process|container|both] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.server.domain.events import decode
from runyard.server.store import EventStore
from runyard.v1 import admin_service_pb2, events_pb2, experiment_service_pb2, resources_pb2
from tests.support.services import NatsServer, postgres_database
from tests.support.stack import Stack, Stubs

# The goal (issue 12): observed wall time within 2% of the ideal N/K seconds (Ray Tune publishes 14%).
GOAL_RATIO = 0.02


def manifest(runs: int, seconds: float = 1.0) -> str:
    return (
        "name: overhead\n"
        "framework: {name: python}\n"
        f"command: sleep {seconds:g}\n"
        "results: s3://results/overhead\n"
        "resources: {gpus: 1}\n"
        f"hyperparameters:\n  i: {{type: int, min: 1, max: {runs}}}\n"
        "search: {method: grid}\n"
    )


def timeline(database_url: str, dump: Path | None = None) -> dict[str, Any]:
    """Times the log recorded: experiment created, and per run assigned/started/uploading/completed.

    With `dump`, every event's position, time, stream and type is also written there (one a line).
    """
    store = EventStore.open(database_url, migrate=False, pool_size=1, max_overflow=0)
    created: datetime | None = None
    runs: dict[str, dict[str, Any]] = defaultdict(dict)
    lines: list[str] = []
    try:
        after = 0
        while batch := store.read_all(after, 2000):
            for e in batch:
                after = e.position
                if dump is not None:
                    lines.append(f"{e.position}\t{e.recorded_at.isoformat()}\t{e.stream_id}\t{e.type}")
                msg = decode(e.type, e.data)
                run_id = e.stream_id.removeprefix("run:")
                if isinstance(msg, events_pb2.ExperimentCreated):
                    created = e.recorded_at
                elif isinstance(msg, events_pb2.RunAssigned):
                    runs[run_id].update(assigned=e.recorded_at, gpu=f"{msg.agent_id}/{msg.gpu_ids[0]}")
                elif isinstance(msg, events_pb2.RunStaging):
                    runs[run_id]["staging"] = e.recorded_at
                elif isinstance(msg, events_pb2.RunStarted):
                    runs[run_id]["started"] = e.recorded_at
                elif isinstance(msg, events_pb2.RunUploading):
                    runs[run_id]["uploading"] = e.recorded_at
                elif isinstance(msg, events_pb2.RunCompleted):
                    runs[run_id]["completed"] = e.recorded_at
    finally:
        store.close()
    if dump is not None:
        dump.write_text("\n".join(lines) + "\n")
    assert created is not None
    return {"created": created, "runs": dict(runs)}


def mean_s(values: list[float]) -> float:
    return round(statistics.fmean(values), 4) if values else 0.0


def measure(
    runs: int,
    agent_count: int,
    gpus: int,
    keep_logs: Path | None = None,
    seconds: float = 1.0,
    agent_flags: tuple[str, ...] = (),
) -> dict[str, Any]:
    slots = agent_count * gpus
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as url:
        root = Path(tmp)
        nats_server = NatsServer(root / "nats").start()
        stack = Stack(root=root, database_url=url, nats_url=nats_server.url, storage_root=(root / "objects").as_uri())
        try:
            stack.start_server()
            with stack.channel() as channel:
                stubs = Stubs(channel)
                stubs.admin.SetQuota(
                    admin_service_pb2.SetQuotaRequest(account_id="default", gpu_quota=slots), timeout=30
                )
                for i in range(agent_count):
                    stack.start_agent(f"gpu-{i}", gpus, "--gpus", f"{gpus}xH100", *agent_flags)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    agents = stubs.admin.ListAgents(admin_service_pb2.ListAgentsRequest(), timeout=10).agents
                    if sum(len(a.gpus) for a in agents if a.alive) == slots:
                        break
                    time.sleep(0.2)
                else:
                    raise RuntimeError(f"agents did not register:\n{stack.logs()}")
                exp = stubs.experiments.CreateExperiment(
                    experiment_service_pb2.CreateExperimentRequest(manifest_yaml=manifest(runs, seconds)), timeout=60
                ).experiment
                deadline = time.monotonic() + (30 + seconds) * runs / slots + 120
                while time.monotonic() < deadline:
                    got = stubs.experiments.GetExperiment(
                        experiment_service_pb2.GetExperimentRequest(experiment_id=exp.id), timeout=30
                    ).experiment
                    if got.state != resources_pb2.EXPERIMENT_STATE_ACTIVE:
                        break
                    time.sleep(0.5)
                if got.state != resources_pb2.EXPERIMENT_STATE_COMPLETED:
                    raise RuntimeError(f"experiment ended {got.state} {dict(got.runs_by_state)}:\n{stack.logs()}")
        finally:
            stack.stop()
            nats_server.stop()
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                for path in root.glob("*.log"):
                    shutil.copy(path, keep_logs / path.name)
        t = timeline(url, keep_logs / "events.tsv" if keep_logs is not None else None)

    per_run = t["runs"]
    last = max(r["completed"] for r in per_run.values())
    observed = (last - t["created"]).total_seconds()
    ideal = runs / slots * seconds
    spans = list(per_run.values())
    by_gpu: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in spans:
        by_gpu[r["gpu"]].append(r)
    gaps = []
    turns = []
    for held in by_gpu.values():
        held.sort(key=lambda r: r["assigned"])
        gaps += [(b["assigned"] - a["completed"]).total_seconds() for a, b in itertools.pairwise(held)]
        turns += [(b["assigned"] - a["assigned"]).total_seconds() for a, b in itertools.pairwise(held)]
    overhead = (observed - ideal) / ideal
    return {
        "runs": runs,
        "gpu_slots": slots,
        "command": f"sleep {seconds:g}",
        "ideal_seconds": round(ideal, 2),
        "observed_seconds": round(observed, 2),
        "overhead_percent": round(overhead * 100, 2),
        "overhead_ratio": round(overhead, 4),
        "ray_tune_published_overhead_percent": 14,
        "goal_overhead_percent": round(GOAL_RATIO * 100, 2),
        "goal_overhead_ratio": GOAL_RATIO,
        "goal_met": overhead < GOAL_RATIO,
        "per_run_mean_seconds": {
            "submit_to_first_assignment": round((min(r["assigned"] for r in spans) - t["created"]).total_seconds(), 4),
            "assigned_to_staging": mean_s([(r["staging"] - r["assigned"]).total_seconds() for r in spans]),
            "assigned_to_command_start": mean_s([(r["started"] - r["assigned"]).total_seconds() for r in spans]),
            "command": mean_s([(r["uploading"] - r["started"]).total_seconds() for r in spans]),
            "exit_to_completed": mean_s([(r["completed"] - r["uploading"]).total_seconds() for r in spans]),
            "gpu_idle_between_runs": mean_s(gaps),
            # One GPU's assignment to its next assignment: the command's 1 s plus all the bookkeeping.
            "gpu_turn": mean_s(turns),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=480)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=4, help="GPUs per agent")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the server and agent logs here")
    parser.add_argument("--seconds", type=float, default=1.0, help="each run's `sleep` (default 1)")
    parser.add_argument(
        "--runtime",
        choices=["process", "container", "both"],
        default="process",
        help="both: the same experiment with each runtime, side by side in one invocation",
    )
    args = parser.parse_args()
    # A SIGTERM (timeout, Ctrl-C in a wrapper) still stops the server, agents and NATS started here.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runtimes = ["process", "container"] if args.runtime == "both" else [args.runtime]
    results = [measure_runtime(runtime, args) for runtime in runtimes]
    if len(results) == 2:
        process, container = results
        out: dict[str, Any] = {
            "benchmark": "bookkeeping_overhead",
            "runtimes": results,
            "container_minus_process_overhead_percent": round(
                float(container["overhead_percent"]) - float(process["overhead_percent"]), 2
            ),
        }
    else:
        out = results[0]
    print(json.dumps(out, indent=2))


def measure_runtime(runtime: str, args: argparse.Namespace) -> dict[str, Any]:
    flags: tuple[str, ...] = ()
    service = None
    if runtime == "container":
        from runyard.agent.engine import start_podman_service

        service = start_podman_service()
        flags = ("--runtime", "container", "--engine-url", service.url)
    try:
        measured = measure(args.runs, args.agents, args.gpus, args.keep_logs, args.seconds, flags)
    finally:
        if service is not None:
            service.stop()
    result = {"benchmark": "bookkeeping_overhead", "runtime": runtime, **measured}
    # Other work on the machine slows every step; say how busy it was.
    result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result


if __name__ == "__main__":
    main()
