"""Train a small MLP on scikit-learn's digits (8x8 images, 10 classes) on the CPU.

Runs anywhere: under a Runyard agent it reads $DATA_DIR/digits.npz and writes to
$RESULT_DIR; on a laptop it falls back to sklearn's bundled copy and ./result.

Metrics reach Runyard one way only, so no point is counted twice:
* by default the per-epoch line printed below matches the manifest's
  `metrics.patterns` regex (no Runyard package needed in the training image);
* with RUNYARD_USE_HELPER=1 (and the patterns removed from the manifest) the
  script calls `runyard.log(...)` instead, which writes JSON lines the agent tails.

Checkpoints: with $CHECKPOINT_DIR set (the agent gives every attempt one) the
script saves its whole training state there after each epoch (model, optimizer,
epoch, RNG state, history) as `state.pt`, written to `state.pt.tmp` and then
renamed, so the agent never uploads half a file. At start it loads
$CHECKPOINT_DIR/state.pt when there is one (RUNYARD_RESUMED=1 says the agent
staged one) and goes on from the next epoch, printing "resumed from epoch k".
Each epoch's shuffle is seeded by (seed, epoch) and dropout's RNG state is in
the checkpoint, so an interrupted and resumed run ends with exactly the model of
an uninterrupted one. Without $CHECKPOINT_DIR (a laptop) nothing is saved.

The validation split is `train_test_split(X, y, test_size=0.25, random_state=0)`
on X scaled to [0, 1] (pixels / 16): `load_split()` gives the same split to any
code that wants to check a saved model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

try:  # optional: present when the Runyard client is installed
    import runyard
except ImportError:
    runyard = None  # type: ignore[assignment]


def load_split(data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, X_val, y_train, y_val): X float32 in [0, 1], y int64 class ids."""
    from sklearn.model_selection import train_test_split

    npz = Path(data_dir) / "digits.npz" if data_dir else None
    if npz is not None and npz.exists():
        with np.load(npz) as f:
            x, y = f["X"], f["y"]
    else:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
    x = np.asarray(x, dtype=np.float32) / 16.0
    y = np.asarray(y, dtype=np.int64)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, random_state=0)
    return x_train, x_val, y_train, y_val


def build_model(hidden: int, dropout: float = 0.0) -> nn.Module:
    # The Dropout layer is there even at p=0, so every model has the same state_dict keys
    # and `build_model(hidden)` loads any saved model.pt of that width.
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


CHECKPOINT = "state.pt"


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffle of one epoch depends on (seed, epoch) only, so a resumed run shuffles as an uninterrupted one."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Write atomically: the agent ignores `*.tmp`, and a kill between the two steps leaves the previous state."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, folder / CHECKPOINT)


def load_checkpoint(folder: Path | None) -> dict[str, Any] | None:
    """The saved state, or None when there is none (a first attempt, or no $CHECKPOINT_DIR)."""
    resumed = os.environ.get("RUNYARD_RESUMED") == "1"
    path = folder / CHECKPOINT if folder is not None else None
    if path is None or not path.exists():
        if resumed:
            print(f"RUNYARD_RESUMED=1 but no {CHECKPOINT} in $CHECKPOINT_DIR: starting from epoch 1")
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout before the output layer (0 = none)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu or cuda")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    use_helper = runyard is not None and os.environ.get("RUNYARD_USE_HELPER") == "1"

    x_train, x_val, y_train, y_val = load_split(os.environ.get("DATA_DIR"))
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    xt, yt = torch.from_numpy(x_train).to(device), torch.from_numpy(y_train).to(device)
    xv, yv = torch.from_numpy(x_val).to(device), torch.from_numpy(y_val).to(device)
    print(
        f"data: {len(xt)} train / {len(xv)} validation images; lr={args.lr} hidden={args.hidden} dropout={args.dropout}"
    )

    model = build_model(args.hidden, args.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict[str, Any]] = []
    val_accuracy = 0.0
    first_epoch = 1
    checkpoint_dir = Path(os.environ["CHECKPOINT_DIR"]) if os.environ.get("CHECKPOINT_DIR") else None
    state = load_checkpoint(checkpoint_dir)
    if state is not None and state["hidden"] != args.hidden:
        # A fork (`runyard submit --from RUN`) may change the width: the weights cannot carry over.
        print(f"checkpoint is for hidden={state['hidden']}, not {args.hidden}: starting from epoch 1")
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # a fork may change the learning rate
            group["lr"] = args.lr
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        history = list(state["history"])
        val_accuracy = history[-1]["val_accuracy"] if history else 0.0
        first_epoch = state["epoch"] + 1
        print(f"resumed from epoch {state['epoch']}")
    started = time.time()
    for epoch in range(first_epoch, args.epochs + 1):
        model.train()
        order = torch.randperm(len(xt), generator=epoch_generator(args.seed, epoch)).to(device)
        total = 0.0
        for i in range(0, len(xt), args.batch_size):
            idx = order[i : i + args.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        train_loss = total / len(xt)
        val_accuracy = accuracy(model, xv, yv)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_accuracy": val_accuracy})
        # Printed before the checkpoint: a kill between the two repeats this epoch's line
        # (the control plane keeps the first value) rather than losing it.
        print(f"epoch {epoch} train_loss={train_loss:.4f} val_accuracy={val_accuracy:.4f}", flush=True)
        if use_helper:
            runyard.log(step=epoch, train_loss=train_loss, val_accuracy=val_accuracy)
        if checkpoint_dir is not None:
            save_checkpoint(
                checkpoint_dir,
                {
                    "epoch": epoch,
                    "hidden": args.hidden,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                    "history": history,
                },
            )
        if device.type == "cuda" and epoch == first_epoch:
            from gpu_report import write_gpu_report

            write_gpu_report(Path(os.environ.get("RESULT_DIR", "result")))

    result_dir = Path(os.environ.get("RESULT_DIR", "result"))
    result_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.to("cpu").state_dict(), result_dir / "model.pt")
    summary = {
        "hyperparameters": {
            "lr": args.lr,
            "hidden": args.hidden,
            "dropout": args.dropout,
            "epochs": args.epochs,
            "seed": args.seed,
        },
        "val_accuracy": val_accuracy,
        "resumed_from_epoch": first_epoch - 1,
        "device": str(device),
        "train_seconds": round(time.time() - started, 3),
        "history": history,
    }
    (result_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved model.pt and metrics.json to {result_dir} (val_accuracy={val_accuracy:.4f})")


if __name__ == "__main__":
    main()
