"""The digits examples checkpoint into $CHECKPOINT_DIR and resume from it exactly.

Plain subprocesses, no control plane: what the agent does around them is to give
each attempt a $CHECKPOINT_DIR, stage the last checkpoint into the next attempt's
one and set RUNYARD_RESUMED=1. A run cut short (by `--epochs k`, or by SIGKILL
mid-run) and resumed must train only the epochs it had not checkpointed and end
with the model, history and validation accuracy of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TORCH = EXAMPLES / "digits-pytorch" / "train.py"
KERAS = EXAMPLES / "digits-tensorflow" / "train.py"
EPOCHS = 8
TORCH_ARGS = ["--dropout", "0.3", "--seed", "7"]  # dropout: the RNG state must carry over too
TORCH_EPOCH = re.compile(r"^epoch (\d+) train_loss=\S+ val_accuracy=\S+$", re.M)
KERAS_EPOCH = re.compile(r"^Epoch (\d+)/\d+$", re.M)


def env(checkpoint_dir: Path | None, result_dir: Path, resumed: bool = False) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("CHECKPOINT_DIR", "RUNYARD_RESUMED", "DATA_DIR")}
    out.update(RESULT_DIR=str(result_dir), RUNYARD_RESUMED="1" if resumed else "0", TF_CPP_MIN_LOG_LEVEL="2")
    if checkpoint_dir is not None:
        out["CHECKPOINT_DIR"] = str(checkpoint_dir)
    return out


def train(script: Path, args: list[str], environ: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(script), *args], env=environ, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout


def summary(result_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((result_dir / "metrics.json").read_text())
    return loaded


def epochs_in(pattern: re.Pattern[str], output: str) -> list[int]:
    return [int(e) for e in pattern.findall(output)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The PyTorch example trained EPOCHS epochs in one go, as on a laptop: no $CHECKPOINT_DIR."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    output = train(TORCH, [*TORCH_ARGS, "--epochs", str(EPOCHS)], env(None, cwd / "result"), cwd)
    assert sorted(p.name for p in cwd.iterdir()) == ["result"]  # nothing saved beside the results
    return output, cwd / "result"


def lines(output: str) -> list[str]:
    return [m.group(0) for m in TORCH_EPOCH.finditer(output)]


def assert_same_model(result: Path, reference: Path) -> None:
    import torch

    ours, theirs = torch.load(result / "model.pt"), torch.load(reference / "model.pt")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert summary(result)["val_accuracy"] == summary(reference)["val_accuracy"]
    assert summary(result)["history"] == summary(reference)["history"]


@pytest.mark.parametrize("k", [1, 3])
def test_pytorch_stopped_after_k_epochs_resumes_to_the_uninterrupted_model(
    tmp_path: Path, uninterrupted: tuple[str, Path], k: int
) -> None:
    full_output, full_result = uninterrupted
    checkpoint = tmp_path / "checkpoint"
    first = train(TORCH, [*TORCH_ARGS, "--epochs", str(k)], env(checkpoint, tmp_path / "r1"), tmp_path)
    assert sorted(p.name for p in checkpoint.iterdir()) == ["state.pt"]  # no .tmp left behind
    second = train(
        TORCH, [*TORCH_ARGS, "--epochs", str(EPOCHS)], env(checkpoint, tmp_path / "r2", resumed=True), tmp_path
    )
    assert f"resumed from epoch {k}" in second
    assert epochs_in(TORCH_EPOCH, first) == list(range(1, k + 1))
    assert epochs_in(TORCH_EPOCH, second) == list(range(k + 1, EPOCHS + 1))  # only what was left
    assert lines(first) + lines(second) == lines(full_output)  # the same metric lines, none twice
    assert_same_model(tmp_path / "r2", full_result)
    assert summary(tmp_path / "r2")["resumed_from_epoch"] == k


def test_pytorch_killed_mid_run_resumes_from_its_last_checkpoint(
    tmp_path: Path, uninterrupted: tuple[str, Path]
) -> None:
    full_output, full_result = uninterrupted
    checkpoint = tmp_path / "checkpoint"
    proc = subprocess.Popen(
        [sys.executable, str(TORCH), *TORCH_ARGS, "--epochs", str(EPOCHS)],
        env=env(checkpoint, tmp_path / "r1"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = ""
    try:
        for line in proc.stdout:
            first += line
            if line.startswith("epoch 2 "):
                proc.send_signal(signal.SIGKILL)  # no chance to clean up: only the atomic renames protect it
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    printed = epochs_in(TORCH_EPOCH, first)
    assert printed[:2] == [1, 2]
    assert (checkpoint / "state.pt").exists()  # epoch 1's at least: it was printed before epoch 2 began
    second = train(
        TORCH, [*TORCH_ARGS, "--epochs", str(EPOCHS)], env(checkpoint, tmp_path / "r2", resumed=True), tmp_path
    )
    match = re.search(r"^resumed from epoch (\d+)$", second, re.M)
    assert match, second
    saved = int(match.group(1))
    # Epoch 2's line comes before its checkpoint, so the kill may beat that; on a loaded machine the
    # script may also get further (even to the end) before the kill lands: then there is less to resume.
    assert 1 <= saved <= EPOCHS
    assert epochs_in(TORCH_EPOCH, second) == list(range(saved + 1, EPOCHS + 1))
    # Every epoch was printed by one process or the other; a line printed before a kill that beat its
    # checkpoint is printed again, with the same values (the control plane keeps the first).
    assert sorted(set(lines(first) + lines(second))) == sorted(lines(full_output))
    assert_same_model(tmp_path / "r2", full_result)


def test_pytorch_resumed_without_a_checkpoint_starts_over(tmp_path: Path) -> None:
    output = train(TORCH, ["--epochs", "2"], env(tmp_path / "empty", tmp_path / "r", resumed=True), tmp_path)
    assert "no state.pt in $CHECKPOINT_DIR: starting from epoch 1" in output
    assert epochs_in(TORCH_EPOCH, output) == [1, 2]


def test_pytorch_fork_to_another_width_starts_over(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint"
    train(TORCH, ["--epochs", "1", "--hidden", "32"], env(checkpoint, tmp_path / "r1"), tmp_path)
    output = train(TORCH, ["--epochs", "2", "--hidden", "64"], env(checkpoint, tmp_path / "r2", True), tmp_path)
    assert "checkpoint is for hidden=32, not 64: starting from epoch 1" in output
    assert epochs_in(TORCH_EPOCH, output) == [1, 2]


def test_keras_stopped_after_one_epoch_resumes_to_the_uninterrupted_model(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    args = ["--width", "32", "--dropout", "0.2"]
    full = train(KERAS, [*args, "--epochs", "3"], env(None, tmp_path / "full"), tmp_path)
    assert epochs_in(KERAS_EPOCH, full) == [1, 2, 3]
    checkpoint = tmp_path / "checkpoint"
    first = train(KERAS, [*args, "--epochs", "1"], env(checkpoint, tmp_path / "r1"), tmp_path)  # no "Epoch 1/1"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["state.npz"]
    second = train(KERAS, [*args, "--epochs", "3"], env(checkpoint, tmp_path / "r2", resumed=True), tmp_path)
    assert "resumed" not in first and len(summary(tmp_path / "r1")["history"]["val_accuracy"]) == 1
    assert "resumed from epoch 1" in second
    assert epochs_in(KERAS_EPOCH, second) == [2, 3]  # Keras counts on from initial_epoch
    assert summary(tmp_path / "r2")["val_accuracy"] == summary(tmp_path / "full")["val_accuracy"]
    assert summary(tmp_path / "r2")["history"] == summary(tmp_path / "full")["history"]
    assert summary(tmp_path / "r2")["resumed_from_epoch"] == 1
    assert tensorboard_epochs(tmp_path / "r2" / "logs") == [1, 2]  # step = epoch from 0: epochs 2 and 3


def tensorboard_epochs(logs: Path) -> list[int]:
    """Steps of the run's val_accuracy points in its TensorBoard event files, read as the agent reads them."""
    from runyard.agent.tensorboard import TensorBoardTail

    return sorted(p.step for p in TensorBoardTail(logs).drain() if p.name == "val_accuracy")
