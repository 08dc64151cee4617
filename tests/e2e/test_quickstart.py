"""docs/quickstart.md, run as a newcomer runs it: every `sh` block, in order, in a fresh folder.

The folder holds what a clone gives (the examples) and the clone's `.venv`; the blocks run in one
bash session (so `EXP=...` carries over) with `set -e`, against the embedded stack that the quick
start's own `runyard up` starts. The only change made to the text is `--port 0` on `runyard up`,
so the test never collides with a stack already on the default port. A command that fails, a file
the text names that does not exist, or a step that no longer works fails the test, so the quick
start cannot drift from the code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.stack import cli

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart.md"
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARKER = "@@quickstart-block-{}@@"
#: Epochs of examples/digits-pytorch/quickstart.yaml: each run reports val_accuracy this many times.
EPOCHS = 5
#: The whole quick start, training included; it takes about a minute or two on two busy cores.
TIMEOUT_S = 480


def blocks(info: str) -> list[str]:
    return [m["body"] for m in FENCE.finditer(QUICKSTART.read_text(encoding="utf-8")) if m["info"].strip() == info]


def test_the_install_block_names_what_the_clone_has() -> None:
    (install,) = blocks("sh install")
    commands = [line.split("#")[0].strip() for line in install.splitlines() if line.split("#")[0].strip()]
    assert commands, "the install block is empty"
    for command in commands:
        assert (ROOT / command.split()[0]).is_file(), f"{command}: no such file in the clone"
    assert (ROOT / ".venv" / "bin" / "runyard").is_file()


@pytest.mark.timeout(TIMEOUT_S + 120)  # beyond the suite's 300 s: the blocks' own bound comes first
def test_every_shell_block_of_the_quickstart_runs(tmp_path: Path) -> None:
    shell = blocks("sh")
    assert len(shell) >= 5, "the quick start lost its shell blocks?"
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copytree(
        ROOT / "examples", clone / "examples", ignore=shutil.ignore_patterns("result", "data", "__pycache__")
    )
    (clone / ".venv").symlink_to(ROOT / ".venv")
    script = ["set -eo pipefail"]
    for n, body in enumerate(shell):
        script.append(f"echo {MARKER.format(n)}")
        script.append(re.sub(r"\brunyard up\b", "runyard up --port 0", body))
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    try:
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S,
        )  # fmt: skip
        output = done.stdout
        if done.returncode != 0:
            logs = "".join(
                f"===== {log}\n{log.read_text(errors='replace')[-4000:]}\n"
                for log in sorted((clone / "runyard-data").glob("*.log"))
            )
            pytest.fail(f"the quick start failed (exit {done.returncode}):\n{output}\n{logs}")
    finally:
        subprocess.run(cli("down"), env=env, cwd=clone, timeout=90, capture_output=True)

    parts = re.split(r"@@quickstart-block-(\d+)@@\n", output)
    by_block = {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    assert sorted(by_block) == list(range(len(shell))), output

    def output_of(command: str) -> str:
        (n,) = [i for i, body in enumerate(shell) if command in body]
        return by_block[n]

    # The live table ends with both runs completed.
    table = output_of("--table")
    assert table.count("COMPLETED") >= 2, table
    # `watch RUN` on a run that printed 5 metric lines shows each val_accuracy value once: as the
    # line it printed ("| epoch 3 train_loss=... val_accuracy=..."), not again as a parsed point.
    watched = output_of('runyard watch "$RUN"')
    assert "COMPLETED" in watched, watched
    reports = re.findall(r"(?:epoch|step) \d+:? .*val_accuracy=", watched)
    assert len(reports) == EPOCHS, watched
    # A trained model, a leaderboard and a plot.
    assert (clone / "best" / "model.pt").is_file()
    assert "best: run-" in output_of('runyard show "$EXP"')
    assert "val_accuracy" in output_of("--plot")
