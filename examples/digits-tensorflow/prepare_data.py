"""Write scikit-learn's bundled digits as digits.npz (arrays X: 1797x64 pixels 0-16, y: labels).

    python prepare_data.py data/             # -> data/digits.npz
    python prepare_data.py /tmp/digits.npz   # a path ending in .npz names the file itself
    runyard data upload data/ s3://datasets/digits

train.py reads $DATA_DIR/digits.npz when it is there, so a run trains on exactly
what was uploaded; without it the script falls back to the same bundled data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "data")
    if target.suffix != ".npz":
        target = target / "digits.npz"
    target.parent.mkdir(parents=True, exist_ok=True)
    x, y = load_digits(return_X_y=True)
    np.savez_compressed(target, X=x.astype(np.float32), y=y.astype(np.int64))
    print(f"wrote {target}: X {x.shape}, y {y.shape}")


if __name__ == "__main__":
    main()
