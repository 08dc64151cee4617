#!/usr/bin/env bash
# The main job: start the embedded stack, upload the digits data, submit the
# PyTorch grid, follow it to the end and print the runs with their validation accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
DATA_DIR=${RUNYARD_DEMO_DIR:-$PWD/.runyard}
EXAMPLE=examples/digits-pytorch

runyard up --data-dir "$DATA_DIR" --detach
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python "$EXAMPLE/prepare_data.py" "$tmp/digits.npz"
runyard data upload "$tmp/digits.npz" s3://datasets/digits/digits.npz
experiment=$(runyard submit "$EXAMPLE/manifest.yaml" -o json | python -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "submitted $experiment; following it to the end"
runyard watch "$experiment" >"$DATA_DIR/demo-watch.log" || true
runyard show "$experiment"
echo
echo "The stack is still up (data in $DATA_DIR): try 'runyard list', 'runyard logs RUN', 'runyard metrics RUN'."
echo "Stop it with: .venv/bin/runyard down"
