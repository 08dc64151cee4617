"""What a container adds to one attempt: create + start, and the exit seen by the agent.

Runs N attempts of `true` through the container runtime exactly as the agent's
worker does (`ContainerRuntime.start`: image lookup, folders, create, start),
on a podman system service of its own unless --engine-url is given, and
reports per attempt (p50 / p90 / max, milliseconds):

- ``prepare``: image lookup and the environment (image inspect) before the request;
- ``create`` (the run's folders handed to its uid, then the engine's create) and ``start``;
- ``start_total``: from `start()` called to it returned (what a container adds to submit -> RUNNING:
  the process runtime's spawn is ~2 ms);
- ``exit_seen``: from the start returned to the end known (the shim's exit file, the engine's state);
- ``remove``: removing the ended container.

    .venv/bin/python bench/container_start.py [--runs 30] [--image REF] [--engine-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.agent.engine import connect, engine_kind, start_podman_service
from runyard.agent.runtime_container import ContainerProcess, ContainerRuntime, create_options
from runyard.agent.staging import RunDirs
from runyard.v1.agent_pb2 import WorkAssignment


def summary(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {
        "p50_ms": round(statistics.median(ms), 1),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 1),
        "max_ms": round(ms[-1], 1),
    }


async def one(runtime: ContainerRuntime, root: Path, image: str, timings: dict[str, list[float]]) -> None:
    work = WorkAssignment(run_id=f"bench-{uuid.uuid4().hex[:8]}", attempt=1)
    work.spec.command = "true"
    work.spec.image = image
    dirs = RunDirs.under(root, work.run_id, 1)
    dirs.create()
    t0 = time.monotonic()
    resolved = await asyncio.to_thread(runtime.resolve_image, work)
    plan = await asyncio.to_thread(runtime.plan, work, dirs, resolved)
    t1 = time.monotonic()
    await asyncio.to_thread(runtime.install_shim)
    await asyncio.to_thread(runtime.prepare_dirs, plan)
    # The calls ContainerRuntime.start_blocking makes: the create alone, then the start.
    container_id = await asyncio.to_thread(runtime._create, create_options(plan, runtime.engine))
    t2 = time.monotonic()
    await asyncio.to_thread(runtime.client.api.start, container_id)
    t3 = time.monotonic()
    proc = ContainerProcess(runtime.client, container_id, plan.name, plan.output)
    ended = await proc.wait()
    t4 = time.monotonic()
    await asyncio.to_thread(proc.remove)
    t5 = time.monotonic()
    assert ended.exit_code == 0, ended
    for key, value in (
        ("prepare", t1 - t0),
        ("create", t2 - t1),
        ("start", t3 - t2),
        ("start_total", t3 - t0),
        ("exit_seen", t4 - t3),
        ("remove", t5 - t4),
    ):
        timings.setdefault(key, []).append(value)


async def bench(url: str, runs: int, image: str) -> dict[str, Any]:
    client = connect(url)
    root = Path(tempfile.mkdtemp(prefix="runyard-bench-"))
    runtime = ContainerRuntime(client, f"bench-{uuid.uuid4().hex[:6]}", root / "work")
    timings: dict[str, list[float]] = {}
    await one(runtime, root / "work", image, {})  # warm-up: image layers, the shim
    for _ in range(runs):
        await one(runtime, root / "work", image, timings)
    return {
        "benchmark": "container_start",
        "engine": engine_kind(client),
        "image": image,
        "runs": runs,
        **{key: summary(values) for key, values in timings.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--image", default="localhost/runyard/python:3.11")
    parser.add_argument("--engine-url")
    args = parser.parse_args()
    service = None if args.engine_url else start_podman_service()
    try:
        url = args.engine_url or (service.url if service else "")
        print(json.dumps(asyncio.run(bench(url, args.runs, args.image)), indent=2))
    finally:
        if service is not None:
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
