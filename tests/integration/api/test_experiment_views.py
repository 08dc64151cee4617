"""Experiment views on a live stack: leaderboard, compare, best, plot and TensorBoard export.

Four runs with known curves (a script prints `step N acc=... loss=...`, read by
the manifest's stdout pattern) on PostgreSQL, NATS, file storage and an agent
declaring two GPUs, so GPU time is really billed. One run reaches the highest
accuracy and then fails, so it has no results: `runyard best` must name it and
download the next best run's results instead. Everything is driven through the
`runyard` CLI as a user would, with `-o json` for the checks.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from runyard.agent.tensorboard import TensorBoardTail
from tests.support.stack import Stack, cli

pytestmark = pytest.mark.integration

CURVE_PY = '''\
"""Accuracy rising to a peak at one step then falling; loss its mirror."""
import os, sys
from pathlib import Path

peak, at, fail = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "fail"
for step in range(1, 7):
    acc = peak - 0.05 * abs(step - at)
    print(f"step {step} acc={acc:.4f} loss={1 - acc:.4f}", flush=True)
    if fail:
        sys.exit(1)
out = Path(os.environ["RESULT_DIR"])
out.mkdir(parents=True, exist_ok=True)
(out / "model.txt").write_text(f"peak={peak} at={at}\\n")
'''

MANIFEST = textwrap.dedent(
    """\
    name: views
    framework: {name: python}
    command: python curve.py ${peak} ${at} ${mode}
    resources: {gpus: 1}
    results: s3://results/views
    hyperparameters:
      peak: {type: categorical, values: [0.8, 0.95, 0.9, 0.99]}
      at: {type: categorical, values: [3, 2, 5, 1]}
      mode: {type: categorical, values: [ok, fail]}
    search:
      method: list
      metric: acc
      goal: maximize
      runs:
        - {peak: 0.8, at: 3, mode: ok}
        - {peak: 0.95, at: 2, mode: ok}
        - {peak: 0.9, at: 5, mode: ok}
        - {peak: 0.99, at: 1, mode: fail}
    metrics:
      patterns: ['step (?P<step>\\d+) acc=(?P<acc>[0-9.]+) loss=(?P<loss>[0-9.]+)']
    """
)


def runyard(stack: Stack, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**stack.env(), "RUNYARD_ENDPOINT": stack.endpoint, "RUNYARD_API_KEY": stack.admin_key}
    if stack.storage_root:
        env["RUNYARD_STORAGE_ROOT"] = stack.storage_root
    result = subprocess.run(cli(*args), env=env, capture_output=True, text=True, timeout=180)
    if ok:
        assert result.returncode == 0, f"runyard {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def as_json(stack: Stack, *args: str) -> Any:
    return json.loads(runyard(stack, *args, "-o", "json").stdout)


def test_leaderboard_compare_best_plot_and_export(stack: Stack, tmp_path: Path) -> None:
    stack.start_server()
    stack.start_agent("agent-1", 2, "--gpus", "2xH100")
    code = tmp_path / "code"
    code.mkdir()
    (code / "curve.py").write_text(CURVE_PY)
    (code / "manifest.yaml").write_text(MANIFEST)
    try:
        experiment = as_json(stack, "submit", str(code / "manifest.yaml"))
        runyard(stack, "watch", experiment["id"], "--no-logs", ok=False)  # exits 1: one run failed
        shown = as_json(stack, "show", experiment["id"])
    except BaseException:
        print(stack.logs())
        raise
    by_peak = {r["hyperparameters"]["peak"]: r for r in shown["runs"]}
    board = shown["leaderboard"]
    assert (board["metric"], board["goal"]) == ("acc", "maximize")
    ranked = [(e["rank"], e["best"], e["step"], e["hyperparameters"]["peak"]) for e in board["runs"]]
    assert ranked == [(1, 0.99, 1, 0.99), (2, 0.95, 2, 0.95), (3, 0.9, 5, 0.9), (4, 0.8, 3, 0.8)]
    assert [e["state"] for e in board["runs"]] == ["RUN_STATE_FAILED"] + ["RUN_STATE_COMPLETED"] * 3
    # The runs held a GPU each: the leaderboard shows the GPU time billed for it.
    assert all(e["gpu_seconds"] > 0 for e in board["runs"])
    assert all(
        r["best_metric"] == e["best"]
        for r, e in zip(shown["runs"], sorted(board["runs"], key=lambda e: e["index"]), strict=True)
    )

    table = runyard(stack, "show", experiment["id"]).stdout
    assert f"best: {by_peak[0.99]['id']} acc=0.99 at step 1" in table

    second, third = by_peak[0.95]["id"], by_peak[0.9]["id"]
    compared = as_json(stack, "compare", second, third)["runs"]
    assert [(c["run_id"], c["best"], c["final"]["acc"]) for c in compared] == [
        (second, {"value": 0.95, "step": 2}, 0.75),
        (third, {"value": 0.9, "step": 5}, 0.85),
    ]
    assert all(c["gpu_seconds"] > 0 and c["state"] == "RUN_STATE_COMPLETED" for c in compared)

    dest = tmp_path / "best"
    best = runyard(stack, "best", experiment["id"], str(dest), "-o", "json")
    doc = json.loads(best.stdout)
    assert (doc["run_id"], doc["value"], doc["skipped"]) == (second, 0.95, [by_peak[0.99]["id"]])
    assert (dest / "model.txt").read_text() == "peak=0.95 at=2\n"
    assert "no results stored" in best.stderr
    # The failed run's attempt files (its output, what it left in $RESULT_DIR) are kept under attempts/, apart
    # from results: `download` finds none, `download --all` brings them.
    failed = by_peak[0.99]["id"]
    refused = runyard(stack, "download", failed, str(tmp_path / "failed"), ok=False)
    assert refused.returncode != 0 and "no results" in refused.stderr
    runyard(stack, "download", failed, str(tmp_path / "failed"), "--all")
    assert (tmp_path / "failed" / "attempts" / "1" / "output.log").is_file()

    plot = runyard(stack, "metrics", second, "--plot").stdout
    assert "acc" in plot and "loss" in plot

    target = tmp_path / "tb"
    exported = as_json(stack, "export", "tensorboard", experiment["id"], str(target))
    assert len(exported["runs"]) == 4
    for entry in exported["runs"]:
        stored = as_json(stack, "metrics", entry["run_id"])["points"]
        read = TensorBoardTail(Path(entry["folder"])).drain()
        assert entry["points"] == len(stored) > 0
        assert [(p.name, p.step, p.value, p.time_us) for p in read] == [
            (p["name"], p["step"], p["value"], p["time_us"]) for p in stored
        ]
