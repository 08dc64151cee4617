"""Verdict of bench/gpu_check.sh: did every run use exactly the GPU it was assigned?

Reads `runyard show EXPERIMENT -o json`, `runyard admin agents -o json` and the
downloaded results (each run's gpu.json, written by the training process while it
held its CUDA context). Prints JSON; exits 1 on any mismatch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def check_run(run: dict[str, Any], results: Path) -> dict[str, Any]:
    assigned = list(run.get("gpu_ids", []))
    found = list(results.rglob("gpu.json"))
    report: dict[str, Any] = {"run": run["id"], "state": run["state"], "assigned": assigned}
    problems = []
    if run["state"] != "RUN_STATE_COMPLETED":
        problems.append(f"run ended {run['state']}")
    if len(assigned) != 1:
        problems.append(f"expected 1 assigned GPU, got {assigned}")
    if not found:
        problems.append("no gpu.json: the run did not train on CUDA")
    else:
        used = json.loads(found[0].read_text())
        report["used"] = used
        if used.get("cuda_visible_devices") != ",".join(assigned):
            problems.append(f"CUDA_VISIBLE_DEVICES={used.get('cuda_visible_devices')!r}, assigned {assigned}")
        if used.get("torch_device_count") != len(assigned):
            problems.append(f"torch saw {used.get('torch_device_count')} devices")
        if assigned and used.get("torch_device_uuid") != assigned[0]:
            problems.append(f"torch ran on {used.get('torch_device_uuid')}, assigned {assigned[0]}")
        nvml = used.get("nvml_devices_with_this_pid")
        if nvml is not None and nvml and nvml != assigned:
            problems.append(f"NVML lists the process on {nvml}, assigned {assigned}")
        report["nvml_saw_process"] = bool(nvml)
    report["ok"] = not problems
    report["problems"] = problems
    return report


def main() -> int:
    show = json.loads(Path(sys.argv[1]).read_text())
    agents = json.loads(Path(sys.argv[2]).read_text())
    results = Path(sys.argv[3])
    runs = [check_run(run, results / run["id"]) for run in show["runs"]]
    verdict = {
        "check": "gpu_assignment",
        "agents": agents,
        "runs": runs,
        "ok": bool(runs) and all(r["ok"] for r in runs),
    }
    print(json.dumps(verdict, indent=2))
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
