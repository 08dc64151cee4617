"""Runyard: experiment-centric training of neural networks.

This root package is imported by user training code for the optional metrics
helper, so it must stay light: no gRPC, no SQL, no network.

    import runyard
    runyard.log(step=epoch, train_loss=0.31, val_accuracy=0.94)

`log` appends one JSON line to the file named by RUNYARD_METRICS_FILE, which
the agent tails. Outside a Runyard run (no such variable) it does nothing, so
the same script runs unchanged on a laptop.
"""

from __future__ import annotations

import json
import os
import time

__version__ = "0.1.0"
__all__ = ["__version__", "log"]


def log(step: int, **values: float) -> None:
    """Record metric values at a step for the agent to pick up."""
    path = os.environ.get("RUNYARD_METRICS_FILE")
    if not path:
        return
    if not isinstance(step, int) or isinstance(step, bool):
        raise TypeError(f"runyard.log: step must be an int, got {type(step).__name__}")
    record = {"step": step, "time": time.time()}
    for name, value in values.items():
        record[name] = float(value)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
