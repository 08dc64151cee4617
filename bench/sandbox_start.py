"""What bwrap adds to the process runtime's start: spawn to the command's first output line, and to its exit.

Runs N attempts of a command through `runyard.agent.runtime_local.spawn` exactly as the worker
does, unsandboxed and under the agent's bwrap sandbox (`runyard.agent.sandbox.probe`), alternating
so both see the same machine, and reports per variant (p50 / p90 / max, milliseconds):

- ``first_line``: from spawn() called to the command's first stdout line read (what the sandbox
  adds to submit -> output; the RUNNING report goes out right after spawn() returns);
- ``spawn``: spawn() itself (the fork/exec of bwrap or sh, and the guard);
- ``exit``: from spawn() called to the exit seen.

The command is ``echo up`` (a shell builtin: the sandbox's own cost) and, with --python, the
framework interpreter starting (``python -c 'print(1)'``), which reads its modules through the binds.

    .venv/bin/python bench/sandbox_start.py [--runs 30] [--python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runyard.agent.runtime_local import spawn
from runyard.agent.sandbox import INSIDE, SandboxMode, probe
from runyard.agent.staging import RunDirs


def summary(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {
        "p50": round(statistics.median(ms), 2),
        "p90": round(ms[int(0.9 * (len(ms) - 1))], 2),
        "max": round(ms[-1], 2),
    }


async def one(command: str, dirs: RunDirs, argv: list[str] | None, env: dict[str, str]) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    proc = await spawn(command, dirs.code, env, 1.0, argv)
    spawned = time.perf_counter() - t0
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    first = time.perf_counter() - t0
    if not line:
        raise RuntimeError(f"no output from {command!r}")
    await proc.stdout.read()
    code = await proc.wait()
    if code != 0:
        raise RuntimeError(f"{command!r} exited {code}")
    return spawned, first, time.perf_counter() - t0


async def main(runs: int, python: bool) -> dict[str, Any]:
    interpreter = sys.executable
    sandbox, why = probe(SandboxMode.BWRAP, [interpreter], [])
    assert sandbox is not None, why
    command = f"{interpreter} -c 'print(1)'" if python else "echo up"
    results: dict[str, dict[str, list[float]]] = {
        v: {"spawn": [], "first_line": [], "exit": []} for v in ("none", "bwrap")
    }
    with tempfile.TemporaryDirectory(prefix="runyard-bench-sandbox-") as tmp:
        dirs = RunDirs.under(Path(tmp), "bench", 1)
        dirs.create()
        env = {"PATH": f"{Path(interpreter).parent}:/usr/bin:/bin", "HOME": str(dirs.home)}
        inside_env = {**env, "HOME": str(INSIDE.home)}
        for i in range(runs + 2):
            for variant in ("none", "bwrap"):
                argv = sandbox.argv(command, dirs, interpreter) if variant == "bwrap" else None
                spawned, first, ended = await one(command, dirs, argv, inside_env if argv else env)
                if i >= 2:  # two warm-up rounds
                    results[variant]["spawn"].append(spawned)
                    results[variant]["first_line"].append(first)
                    results[variant]["exit"].append(ended)
    out: dict[str, Any] = {"runs": runs, "command": command, "bwrap": sandbox.path}
    for variant, series in results.items():
        out[variant] = {name: summary(values) for name, values in series.items()}
    out["added_first_line_p50_ms"] = round(out["bwrap"]["first_line"]["p50"] - out["none"]["first_line"]["p50"], 2)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--python", action="store_true", help="time the framework interpreter's start too")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.runs, args.python)), indent=2))
