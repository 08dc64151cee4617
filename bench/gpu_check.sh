#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU: starts the embedded stack (`runyard up`), whose
# agent finds the GPUs through NVML, trains the digits grid with `gpus: 1` on CUDA, and checks
# that each run's process used exactly the GPU it was assigned (CUDA_VISIBLE_DEVICES, torch's
# device UUID and NVML's compute processes must all name the assigned GPU). Prints a JSON verdict;
# exits non-zero on any mismatch. Results and logs go to $OUT (or /tmp/gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
work=$(mktemp -d)
export RUNYARD_STATE_DIR="$work/state" PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/nvidia-smi.txt"
runyard up --data-dir "$work/stack" --port 0 --detach
trap 'runyard down >/dev/null 2>&1 || true; cp "$work"/stack/*.log "$OUT/" 2>/dev/null || true' EXIT
python3 examples/digits-pytorch/prepare_data.py "$work/digits.npz"
runyard data upload "$work/digits.npz" s3://datasets/digits/digits.npz
runyard admin agents -o json > "$OUT/agents.json"
experiment=$(runyard submit examples/digits-pytorch/manifest-gpu.yaml -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
runyard watch "$experiment" > "$OUT/watch.log" 2>&1 || true
runyard show "$experiment" -o json > "$OUT/show.json"
for run in $(python3 -c 'import json,sys; print(" ".join(r["id"] for r in json.load(open(sys.argv[1]))["runs"]))' "$OUT/show.json"); do
  runyard download "$run" "$work/results/$run" > /dev/null
done
python3 bench/gpu_check_verify.py "$OUT/show.json" "$OUT/agents.json" "$work/results" | tee "$OUT/verdict.json"
