"""Submit-to-RUNNING latency over one-run experiments with a trivial command on an idle agent.

Starts a real stack (a `runyard server`, a private nats-server, file storage and
one `runyard agent`), then for each experiment times CreateExperiment until the
run's RUNNING update arrives on WatchRun, and lets the run finish before the
next one. Prints JSON with p50 and p99 (goal, issue 12: p50 under 15 ms and p99 under 50 ms on
PostgreSQL; `goal_met` says whether each database's figures are within it).

`--runtime container` (or `both`) measures an agent with `--runtime container` too, on a
podman system service of the benchmark's own (goal: a container adds under 300 ms at p50):
its figures are under `<database>_container`, beside the process runtime's under `<database>`.

    .venv/bin/python bench/submit_latency.py [--count 100] [--database sqlite|postgresql]
        [--runtime process|container|both]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.v1 import common_pb2, experiment_service_pb2, run_service_pb2
from tests.support.services import NatsServer, postgres_database
from tests.support.stack import Stack, Stubs

# Issue 12's goal for submit -> RUNNING on PostgreSQL.
GOAL_P50_MS, GOAL_P99_MS = 15, 50

MANIFEST = """\
name: latency
framework: {name: python}
command: "true"
results: s3://results/latency
"""


@contextlib.contextmanager
def database(kind: str, root: Path) -> Iterator[str]:
    if kind == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{root}/runyard.db"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(kind: str, count: int, agent_flags: tuple[str, ...] = ()) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as url:
        root = Path(tmp)
        nats = NatsServer(root / "nats").start()
        stack = Stack(root=root, database_url=url, nats_url=nats.url, storage_root=(root / "objects").as_uri())
        try:
            stack.start_server()
            stack.start_agent("bench-agent", 1, *agent_flags)
            latencies: list[float] = []
            with stack.channel() as channel:
                stubs = Stubs(channel)
                for i in range(count + 3):
                    started = time.perf_counter()
                    exp = stubs.experiments.CreateExperiment(
                        experiment_service_pb2.CreateExperimentRequest(manifest_yaml=MANIFEST), timeout=30
                    ).experiment
                    running_at = None
                    for message in stubs.runs.WatchRun(
                        run_service_pb2.WatchRunRequest(run_id=exp.runs[0].id), timeout=60
                    ):
                        status = message.update.status
                        if running_at is None and status.state == common_pb2.RUN_STATE_RUNNING:
                            running_at = time.perf_counter()
                        if status.final:
                            break
                    if running_at is None:
                        raise RuntimeError(f"run {exp.runs[0].id} never reported RUNNING:\n{stack.logs()}")
                    if i >= 3:  # the first runs warm up connections and caches
                        latencies.append((running_at - started) * 1000)
            p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
            return {
                "experiments": count,
                "p50_ms": round(p50, 1),
                "p99_ms": round(p99, 1),
                "mean_ms": round(statistics.fmean(latencies), 1),
                "goal_met": p50 < GOAL_P50_MS and p99 < GOAL_P99_MS,
            }
        finally:
            stack.stop()
            nats.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--runtime", choices=["process", "container", "both"], default="process")
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    result: dict[str, object] = {
        "benchmark": "submit_to_running",
        "goal_p50_ms": GOAL_P50_MS,
        "goal_p99_ms": GOAL_P99_MS,
        "load_average_1m_before": round(os.getloadavg()[0], 2),
    }
    with contextlib.ExitStack() as stack:
        engine = ""
        if args.runtime != "process":
            from runyard.agent.engine import start_podman_service

            service = start_podman_service()
            stack.callback(service.stop)
            engine = service.url
        for kind in kinds:
            if args.runtime != "container":
                result[kind] = measure(kind, args.count)
            if args.runtime != "process":
                result[f"{kind}_container"] = measure(
                    kind, args.count, ("--runtime", "container", "--engine-url", engine)
                )
    result["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
