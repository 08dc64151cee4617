"""Train a small Keras MLP on scikit-learn's digits (8x8 images, 10 classes) on the CPU.

Runs anywhere: under a Runyard agent it reads $DATA_DIR/digits.npz and writes to
$RESULT_DIR; on a laptop it falls back to sklearn's bundled copy and ./result.

Metrics reach Runyard through Keras' own TensorBoard callback, and only through
it: the event files it writes under $RESULT_DIR/logs are tailed by the agent
(logs/train -> loss, accuracy; logs/validation -> val_loss, val_accuracy; the
step is the epoch, from 0). The script prints Keras' usual progress lines for
people, but the manifest has no stdout pattern, so nothing is counted twice and
no Runyard package is needed in the training image.

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
    started = time.time()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=args.epochs,
        batch_size=args.batch_size,
        # The run's only metrics source: event files the agent reads under RESULT_DIR.
        callbacks=[keras.callbacks.TensorBoard(log_dir=str(result_dir / "logs"), write_graph=False)],
        verbose=2,
    )
    model.save(result_dir / "model.keras")
    val_accuracy = float(history.history["val_accuracy"][-1])
    summary = {
        "hyperparameters": {
            "lr": args.lr,
            "width": args.width,
            "dropout": args.dropout,
            "epochs": args.epochs,
            "seed": args.seed,
        },
        "val_accuracy": val_accuracy,
        "train_seconds": round(time.time() - started, 3),
        "history": {name: [float(v) for v in values] for name, values in history.history.items()},
    }
    (result_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved model.keras and metrics.json to {result_dir} (val_accuracy={val_accuracy:.4f})", flush=True)


if __name__ == "__main__":
    main()
