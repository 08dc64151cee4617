"""Train a small Keras MLP on scikit-learn's digits (8x8 images, 10 classes) on the CPU.

Runs anywhere: under a Runyard agent it reads $DATA_DIR/digits.npz and writes to
$RESULT_DIR; on a laptop it falls back to sklearn's bundled copy and ./result.

Metrics reach Runyard through Keras' own TensorBoard callback, and only through
it: the event files it writes under $RESULT_DIR/logs are tailed by the agent
(logs/train -> loss, accuracy; logs/validation -> val_loss, val_accuracy; the
step is the epoch, from 0). The script prints Keras' usual progress lines for
people, but the manifest has no stdout pattern, so nothing is counted twice and
no Runyard package is needed in the training image.

Checkpoints: with $CHECKPOINT_DIR set (the agent gives every attempt one) the
script saves its whole training state there after each epoch as `state.npz`
(every model variable, dropout's seed state included, the optimizer's
variables, the epoch and the history), written to `.state.npz` and renamed, so
the agent never uploads half a file. At start it loads $CHECKPOINT_DIR/state.npz
when there is one (RUNYARD_RESUMED=1 says the agent staged one) and goes on from
the next epoch (`initial_epoch`, so the TensorBoard steps go on too), printing
"resumed from epoch k". Each epoch's order is a permutation seeded by (seed,
epoch), so an interrupted and resumed run ends with exactly the model of an
uninterrupted one. Without $CHECKPOINT_DIR (a laptop) nothing is saved.

The validation split is `train_test_split(X, y, test_size=0.25, random_state=0)`
on X scaled to [0, 1] (pixels / 16), the same split as examples/digits-pytorch:
`load_split()` gives it to any code that wants to check a saved model.keras.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

# Keep TensorFlow's C++ start-up chatter out of the run's log; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


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


def build_model(width: int, dropout: float, lr: float) -> Any:
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Share of `x` classified as `y` by a (loaded) model."""
    predicted = np.argmax(model.predict(x, verbose=0), axis=1)
    return float(np.mean(predicted == y))


CHECKPOINT = "state.npz"


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order of one epoch depends on (seed, epoch) only, so a resumed run sees what an uninterrupted one sees."""
    return np.random.default_rng([seed, epoch]).permutation(size)


def training_batches(x: np.ndarray, y: np.ndarray, seed: int, epochs: range, batch_size: int) -> Any:
    """One tf.data stream of the given epochs' batches, each epoch in its own (seed, epoch) order.

    fit() keeps one iterator across epochs when steps_per_epoch is set, so epoch e reads its own batches.
    """
    import tensorflow as tf

    streams = [
        tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(batch_size)
        for order in (epoch_order(seed, epoch, len(x)) for epoch in epochs)
    ]
    dataset = streams[0]
    for stream in streams[1:]:
        dataset = dataset.concatenate(stream)
    return dataset


def save_checkpoint(folder: Path, model: Any, epoch: int, history: dict[str, list[float]]) -> None:
    """Write atomically: the agent ignores dot-names, and a kill before the rename leaves the previous state."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"model_{i}": np.asarray(v) for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer_{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)})
    meta = {"epoch": epoch, "variables": len(model.variables), "history": history}
    tmp = folder / ("." + CHECKPOINT)
    with tmp.open("wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, folder / CHECKPOINT)


def load_checkpoint(folder: Path | None, model: Any, lr: float) -> tuple[int, dict[str, list[float]]]:
    """Restore the saved state into `model`: (epochs done, history so far); (0, {}) when there is none."""
    path = folder / CHECKPOINT if folder is not None else None
    if path is None or not path.exists():
        if os.environ.get("RUNYARD_RESUMED") == "1":
            print(f"RUNYARD_RESUMED=1 but no {CHECKPOINT} in $CHECKPOINT_DIR: starting from epoch 1", flush=True)
        return 0, {}
    with np.load(path) as saved:
        meta = json.loads(str(saved["meta"]))
        shapes = [tuple(saved[f"model_{i}"].shape) for i in range(meta["variables"])]
        if shapes != [tuple(v.shape) for v in model.variables]:
            # A fork (`runyard submit --from RUN`) may change the width: the weights cannot carry over.
            print("checkpoint is for another architecture: starting from epoch 1", flush=True)
            return 0, {}
        for i, variable in enumerate(model.variables):
            variable.assign(saved[f"model_{i}"])
        model.optimizer.build(model.trainable_variables)
        for i, variable in enumerate(model.optimizer.variables):
            variable.assign(saved[f"optimizer_{i}"])
    model.optimizer.learning_rate.assign(lr)  # a fork may change the learning rate
    print(f"resumed from epoch {meta['epoch']}", flush=True)
    return int(meta["epoch"]), {name: list(values) for name, values in meta["history"].items()}


def checkpointer(folder: Path, model: Any, board: Any, history: dict[str, list[float]]) -> Any:
    """A callback saving the state after each epoch, once that epoch's TensorBoard points are on disk."""
    import keras

    class Checkpointer(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            for writer in getattr(board, "_writers", {}).values():
                writer.flush()  # a kill after the checkpoint must not lose points the resumed run won't repeat
            for name, value in (logs or {}).items():
                history.setdefault(name, []).append(float(value))
            save_checkpoint(folder, model, epoch + 1, history)

    return Checkpointer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--width", type=int, default=128, help="units of the hidden layer")
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout after the hidden layer (0 = none)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(args.seed)

    x_train, x_val, y_train, y_val = load_split(os.environ.get("DATA_DIR"))
    print(
        f"data: {len(x_train)} train / {len(x_val)} validation images; "
        f"lr={args.lr} width={args.width} dropout={args.dropout}",
        flush=True,
    )
    result_dir = Path(os.environ.get("RESULT_DIR", "result"))
    result_dir.mkdir(parents=True, exist_ok=True)

    model = build_model(args.width, args.dropout, args.lr)
    checkpoint_dir = Path(os.environ["CHECKPOINT_DIR"]) if os.environ.get("CHECKPOINT_DIR") else None
    done, history = load_checkpoint(checkpoint_dir, model, args.lr)
    # The run's only metrics source: event files the agent reads under RESULT_DIR (step = epoch, from 0).
    board = keras.callbacks.TensorBoard(log_dir=str(result_dir / "logs"), write_graph=False)
    callbacks = [board]
    if checkpoint_dir is not None:
        callbacks.append(checkpointer(checkpoint_dir, model, board, history))
    started = time.time()
    if done < args.epochs:
        fitted = model.fit(
            training_batches(x_train, y_train, args.seed, range(done + 1, args.epochs + 1), args.batch_size),
            steps_per_epoch=-(-len(x_train) // args.batch_size),
            validation_data=(x_val, y_val),
            shuffle=False,  # the batches come in their (seed, epoch) order
            initial_epoch=done,
            epochs=args.epochs,
            callbacks=callbacks,
            verbose=2,
        )
        if checkpoint_dir is None:  # else the checkpointer has kept the history
            for name, values in fitted.history.items():
                history.setdefault(name, []).extend(float(v) for v in values)
    model.save(result_dir / "model.keras")
    val_accuracy = float(history["val_accuracy"][-1]) if history.get("val_accuracy") else 0.0
    summary = {
        "hyperparameters": {
            "lr": args.lr,
            "width": args.width,
            "dropout": args.dropout,
            "epochs": args.epochs,
            "seed": args.seed,
        },
        "val_accuracy": val_accuracy,
        "resumed_from_epoch": done,
        "train_seconds": round(time.time() - started, 3),
        "history": history,
    }
    (result_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved model.keras and metrics.json to {result_dir} (val_accuracy={val_accuracy:.4f})", flush=True)


if __name__ == "__main__":
    main()
