#!/usr/bin/env bash
# The main job: start the embedded stack, upload the digits data, submit the
# PyTorch grid, show its runs training in a live table, then print the leaderboard.
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
experiment=$(runyard submit -q "$EXAMPLE/manifest.yaml")
echo "submitted $experiment; a live table of its runs until they end (every line: runyard watch $experiment)"
runyard watch "$experiment" --table || true
echo
runyard show "$experiment"
echo
echo "The stack is still up (data in $DATA_DIR): try 'runyard list', 'runyard logs $experiment --tail 5',"
echo "'runyard metrics RUN --plot', 'runyard best $experiment best/'. More in docs/quickstart.md."
echo "Stop it with: .venv/bin/runyard down"
