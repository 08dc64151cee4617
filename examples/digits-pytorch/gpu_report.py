"""Records which GPU this training process really runs on, for bench/gpu_check.sh.

Written while the process holds its CUDA context, so NVML lists it among the
compute processes of the device it uses. CUDA_VISIBLE_DEVICES is what the
agent assigned; NVML and torch say what was used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def write_gpu_report(result_dir: Path) -> None:
    report: dict[str, object] = {
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "torch_device_count": torch.cuda.device_count(),
        "torch_device_name": torch.cuda.get_device_name(0),
        "torch_device_uuid": "GPU-" + str(torch.cuda.get_device_properties(0).uuid),
        "pid": os.getpid(),
    }
    try:
        import pynvml

        pynvml.nvmlInit()
        used = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            pids = [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
            if os.getpid() in pids:
                used.append(uuid if isinstance(uuid, str) else uuid.decode())
        report["nvml_devices_with_this_pid"] = used
        pynvml.nvmlShutdown()
    except Exception as exc:  # NVML may be missing or not see processes (containers)
        report["nvml_error"] = repr(exc)
    result_dir.mkdir(parents=True, exist_ok=True)
    (result_dir / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
