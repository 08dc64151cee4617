"""The digits-pytorch example, each epoch followed by a pause, so a test can kill its agent between two epochs.

The example itself (train.py, copied beside this file into the code the test
uploads) does the training, the checkpoint after each epoch and the exact
resume; this only waits EPOCH_PAUSE_S seconds after each checkpoint is saved.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import train  # type: ignore[import-not-found]

_save = train.save_checkpoint


def _save_then_pause(folder: Path, state: dict[str, Any]) -> None:
    _save(folder, state)
    time.sleep(float(os.environ.get("EPOCH_PAUSE_S", "0")))


train.save_checkpoint = _save_then_pause

if __name__ == "__main__":
    train.main()
