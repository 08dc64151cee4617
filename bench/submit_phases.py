"""Where submit -> RUNNING goes: each one-run experiment's client times beside its events' recorded_at.

The same stack and loop as bench/submit_latency.py (PostgreSQL, one agent, `true`), then the log is
read back and each run's way is split at its events: send -> RunCreated (the CreateExperiment call up
to its append), RunCreated -> RunAssigned (the scheduler), RunAssigned -> RunStaging (dispatch, the
agent's pull, its report stored), RunStaging -> RunStarted (the spawn, its report stored), RunStarted
-> the client's WatchRun shows RUNNING. recorded_at is the server's clock when an append starts; the
client runs on the same machine. Prints p50/p90 per phase in milliseconds, and the load.

    .venv/bin/python bench/submit_phases.py [--count 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.submit_latency import MANIFEST
from runyard.server.domain.events import decode
from runyard.server.store import EventStore
from runyard.v1 import common_pb2, experiment_service_pb2, run_service_pb2
from tests.support.services import NatsServer, postgres_database
from tests.support.stack import Stack, Stubs

PHASES = [
    ("send -> RunCreated", None, "RunCreated"),
    ("RunCreated -> RunAssigned", "RunCreated", "RunAssigned"),
    ("RunAssigned -> RunStaging", "RunAssigned", "RunStaging"),
    ("RunStaging -> RunStarted", "RunStaging", "RunStarted"),
    ("RunStarted -> client sees RUNNING", "RunStarted", None),
]


def submit_all(url: str, count: int) -> dict[str, tuple[float, float]]:
    """run id -> (time sent, time RUNNING was seen), after three warm-up runs."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nats = NatsServer(root / "nats").start()
        stack = Stack(root=root, database_url=url, nats_url=nats.url, storage_root=(root / "objects").as_uri())
        seen: dict[str, tuple[float, float]] = {}
        try:
            stack.start_server()
            stack.start_agent("bench-agent", 1)
            with stack.channel() as channel:
                stubs = Stubs(channel)
                for i in range(count + 3):
                    sent = time.time()
                    request = experiment_service_pb2.CreateExperimentRequest(manifest_yaml=MANIFEST)
                    run_id = stubs.experiments.CreateExperiment(request, timeout=30).experiment.runs[0].id
                    running = 0.0
                    for m in stubs.runs.WatchRun(run_service_pb2.WatchRunRequest(run_id=run_id), timeout=60):
                        if not running and m.update.status.state == common_pb2.RUN_STATE_RUNNING:
                            running = time.time()
                        if m.update.status.final:
                            break
                    if i >= 3 and running:
                        seen[run_id] = (sent, running)
        finally:
            stack.stop()
            nats.stop()
        return seen


def event_times(url: str, run_ids: set[str]) -> dict[str, dict[str, float]]:
    """run id -> event type name -> its first recorded_at (epoch seconds)."""
    store = EventStore.open(url, migrate=False, pool_size=1, max_overflow=0)
    times: dict[str, dict[str, float]] = {}
    try:
        after = 0
        while batch := store.read_all(after, 2000):
            for e in batch:
                after = e.position
                run_id = e.stream_id.partition(":")[2]
                if run_id in run_ids:
                    name = type(decode(e.type, e.data)).__name__
                    times.setdefault(run_id, {}).setdefault(name, e.recorded_at.timestamp())
    finally:
        store.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=40)
    args = parser.parse_args()
    result: dict[str, object] = {"benchmark": "submit_phases", "load_average_1m_before": round(os.getloadavg()[0], 2)}
    with postgres_database() as url:
        seen = submit_all(url, args.count)
        times = event_times(url, set(seen))
    spans: dict[str, list[float]] = {name: [] for name, _, _ in [*PHASES, ("total", None, None)]}
    for run_id, (sent, running) in seen.items():
        at = times[run_id]
        for name, start, end in PHASES:
            spans[name].append(((at[end] if end else running) - (at[start] if start else sent)) * 1000)
        spans["total"].append((running - sent) * 1000)
    result["phases_ms"] = {
        name: {"p50": round(statistics.median(v), 1), "p90": round(sorted(v)[int(0.9 * (len(v) - 1))], 1)}
        for name, v in spans.items()
    }
    result["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
