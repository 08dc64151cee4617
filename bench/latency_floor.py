"""The floor under submit -> RUNNING and a GPU's turn: each hop's raw cost on this machine, now.

Submit -> RUNNING is a chain of hops, each waiting on the one before: the
CreateExperiment call and its commit (ExperimentCreated + RunCreated), the
scheduler's commit of RunAssigned, a JetStream publish of the work and the
agent's pull, the agent's RunStaging report (a JetStream publish acked, stored
by ingest in a commit), the spawn of the command and of its guard, the
RunStarted report and its commit, and the watcher's read. A GPU's turn
(bench/overhead.py) adds to the command: the uploading and completed reports'
acks, RunCompleted's commit, RunAssigned's commit, the work's and the staging
report's round trips, the two spawns, and the sandbox's own setup before the
command runs (bwrap's namespaces and mounts: a spawn in the sandbox to its
exit, less a bare one).

This measures those primitives with nothing of Runyard's around them: one
PostgreSQL transaction of one INSERT (psycopg, commit), a JetStream publish
with its ack plus a pull of the same message, and an asyncio subprocess spawn
of ``true`` to its exit, bare and (where bwrap works) with the agent's own
bwrap command line (agent/sandbox.py). Each chain's sum is the floor a design
of these hops cannot go under on this machine.

    .venv/bin/python bench/latency_floor.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats
import psycopg

from tests.support.services import NatsServer, postgres_database

# Hops of each kind on the critical path of submit -> RUNNING (bench/submit_latency.py)...
CHAIN = {"commit": 4, "jetstream_round_trip": 3, "spawn": 2}
# ...and of a GPU's turn beyond its command (bench/overhead.py; the sandbox's setup where there is one).
TURN_CHAIN = {"commit": 2, "jetstream_round_trip": 4, "spawn": 2, "sandbox_setup": 1}


def figures(took: list[float]) -> dict[str, float]:
    took = sorted(took)
    return {
        "p50_ms": round(statistics.median(took) * 1000, 2),
        "p99_ms": round(took[min(len(took) - 1, round(0.99 * (len(took) - 1)))] * 1000, 2),
    }


def commits(url: str, repeat: int) -> list[float]:
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        conn.execute("CREATE TABLE floor_probe (id bigserial PRIMARY KEY, data bytea)")
        conn.commit()
        took = []
        for _ in range(repeat):
            started = time.perf_counter()
            conn.execute("INSERT INTO floor_probe (data) VALUES (%s)", (b"x" * 200,))
            conn.commit()
            took.append(time.perf_counter() - started)
    return took


async def jetstream(url: str, repeat: int) -> list[float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="FLOOR", subjects=["floor.>"])
    sub = await js.pull_subscribe("floor.x", durable="floor")
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        await js.publish("floor.x", b"x" * 200)
        (msg,) = await sub.fetch(1, timeout=5)
        await msg.ack()
        took.append(time.perf_counter() - started)
    await nc.close()
    return took


async def spawns(repeat: int, argv: list[str]) -> list[float]:
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*argv)
        await proc.wait()
        took.append(time.perf_counter() - started)
    return took


def sandboxed_true(root: Path) -> list[str] | None:
    """The agent's bwrap command line for `true` (agent/sandbox.py), or None where bwrap does not work."""
    from runyard.agent import sandbox, staging

    try:
        bwrap, _ = sandbox.probe(sandbox.SandboxMode.BWRAP, [sys.executable], [])
    except sandbox.SandboxError:
        return None
    assert bwrap is not None
    dirs = staging.RunDirs(**{f.name: root / f.name for f in dataclasses.fields(staging.RunDirs)})
    for name, path in vars(dirs).items():
        if name == "metrics_file":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)
    return bwrap.argv("true", dirs, sys.executable)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    result: dict[str, object] = {"benchmark": "latency_floor", "load_average_1m_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as url:
        nats_server = NatsServer(Path(tmp) / "nats").start()
        try:
            hops = {
                "commit": figures(commits(url, args.repeat)),
                "jetstream_round_trip": figures(asyncio.run(jetstream(nats_server.url, args.repeat))),
                "spawn": figures(asyncio.run(spawns(args.repeat, ["true"]))),
            }
            sandboxed = sandboxed_true(Path(tmp) / "run")
            if sandboxed is not None:
                hops["spawn_in_bwrap_sandbox"] = figures(asyncio.run(spawns(args.repeat, sandboxed)))
        finally:
            nats_server.stop()
    result["hops"] = hops
    result["submit_to_running_chain"] = CHAIN
    if "spawn_in_bwrap_sandbox" in hops:
        setup = hops["spawn_in_bwrap_sandbox"]["p50_ms"] - hops["spawn"]["p50_ms"]
        hops["sandbox_setup"] = {"p50_ms": round(setup, 2)}
    result["submit_to_running_floor_p50_ms"] = round(sum(hops[k]["p50_ms"] * n for k, n in CHAIN.items()), 2)
    result["gpu_turn_chain"] = TURN_CHAIN
    turn = sum(hops[k]["p50_ms"] * n for k, n in TURN_CHAIN.items() if k in hops)
    result["gpu_turn_floor_p50_ms"] = round(turn, 2)
    result["overhead_floor_percent_for_1s_runs"] = round(turn / 1000 * 100, 2)
    result["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
