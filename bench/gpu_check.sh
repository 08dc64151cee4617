#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU: starts the embedded stack (`runyard up`), whose
# agent finds the GPUs through NVML, trains the digits grid with `gpus: 1` on CUDA, and checks
# that each run's process used exactly the GPU it was assigned (CUDA_VISIBLE_DEVICES, torch's
# device UUID and NVML's compute processes must all name the assigned GPU). Prints a JSON verdict;
# exits non-zero on any mismatch. Results and logs go to $OUT (or /tmp/gpu-check-<runtime>).
#
#   bench/gpu_check.sh             # each run a process on the host (--runtime process)
#   bench/gpu_check.sh container   # each run in its container (--runtime container): needs Podman 5.4+
#                                  # (or Docker Engine with the NVIDIA runtime) and nvidia-container-toolkit;
#                                  # builds the PyTorch image and the CDI spec (GPUs named by UUID) if missing
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${1:-process}
OUT=${OUT:-/tmp/gpu-check-$RUNTIME}
mkdir -p "$OUT"
work=$(mktemp -d)
export RUNYARD_STATE_DIR="$work/state" PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/nvidia-smi.txt"
if [ "$RUNTIME" = container ]; then
  # The container runtime asks for each GPU as CDI device nvidia.com/gpu=<UUID>.
  if ! grep -qs 'name: GPU-' /etc/cdi/nvidia.yaml; then
    nvidia-ctk cdi generate --device-name-strategy=uuid --output=/etc/cdi/nvidia.yaml
  fi
  nvidia-ctk cdi list | tee "$OUT/cdi.txt"
  podman --version | tee "$OUT/engine.txt" || true
  runyard images build pytorch 2.13 2>&1 | tee "$OUT/image-build.log"
fi
runyard up --data-dir "$work/stack" --port 0 --detach --runtime "$RUNTIME"
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
