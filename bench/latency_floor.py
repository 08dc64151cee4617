"""The floor under submit -> RUNNING and a GPU's turn: each hop's raw cost on this machine, now.

Submit -> RUNNING is a chain of hops, each waiting on the one before: the
CreateExperiment call, its commit (ExperimentCreated + RunCreated), the
scheduler's commit of RunAssigned, a JetStream publish of the work and the
agent's pull, the agent's RunStaging and RunStarted reports (each a JetStream
publish acked, then stored by ingest in a commit of its own), the command's
spawn, and the watcher's read. This measures the raw primitives those hops
are made of, with nothing of Runyard's around them: one PostgreSQL
transaction of one INSERT (psycopg, autocommit off, commit), a JetStream
publish with its ack plus a pull of the same message, and an asyncio
subprocess spawn of ``true`` to its exit. Their sum over the chain is the
floor a design of these hops cannot go under on this machine.

    .venv/bin/python bench/latency_floor.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import asyncio
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

# Hops of submit -> RUNNING (bench/submit_latency.py) of each kind, on the critical path.
CHAIN = {"commit": 4, "jetstream_round_trip": 3, "spawn": 1}


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


async def spawns(repeat: int) -> list[float]:
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec("true")
        await proc.wait()
        took.append(time.perf_counter() - started)
    return took


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
                "spawn": figures(asyncio.run(spawns(args.repeat))),
            }
        finally:
            nats_server.stop()
    result["hops"] = hops
    result["submit_to_running_chain"] = CHAIN
    result["submit_to_running_floor_p50_ms"] = round(sum(hops[k]["p50_ms"] * n for k, n in CHAIN.items()), 2)
    result["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
