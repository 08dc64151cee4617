"""The GPUs of this host: detected through NVML, or declared for tests and development.

Ids. A run's GPUs travel as the GPU UUIDs (``GPU-8f2c...``) in
``WorkAssignment.gpu_ids`` and reach the run's command as
``CUDA_VISIBLE_DEVICES=<uuid>,<uuid>``. UUIDs, not indexes, because NVML
numbers devices in PCI bus order while CUDA numbers them fastest first unless
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is set: an index could name another run's
GPU, a UUID cannot. Inside the run CUDA renumbers what it sees from 0, so the
command simply uses ``cuda:0``.

A declared inventory (``--gpus 4xH100``) stands in for NVML on hosts without
GPUs; its devices get made-up UUIDs ``GPU-<agent id>-<index>`` that are unique
across agents, so scheduling, CUDA_VISIBLE_DEVICES and billing behave as with
real devices (CUDA itself would see no device behind them).

Models. NVML names devices like "NVIDIA H100 80GB HBM3"; manifests and agent
labels match on the short model ("H100"), which `short_model` derives, while
the full name is kept for people.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from runyard.v1.common_pb2 import GpuDevice

log = structlog.get_logger(__name__)

# Words of an NVML name that say nothing about which GPU it is.
_VENDOR = {"nvidia", "tesla", "geforce", "quadro"}
_FORM = re.compile(r"^(\d+(gb|g|gib)|pcie|sxm\d*|hbm\d*e?|nvl|mig.*|\d+c)$", re.IGNORECASE)
_FAMILY_PREFIX = {"rtx", "gtx", "titan"}
_DECLARED_ITEM = re.compile(r"^\s*(?:(\d+)\s*[xX*]\s*)?([A-Za-z][A-Za-z0-9_.-]*)\s*$")


@dataclass(frozen=True)
class Gpu:
    """One GPU of this host."""

    index: int
    uuid: str
    #: The full device name, e.g. "NVIDIA H100 80GB HBM3".
    name: str
    #: The short model runs ask for, e.g. "H100".
    model: str
    memory_bytes: int = 0

    def to_proto(self) -> GpuDevice:
        return GpuDevice(index=self.index, uuid=self.uuid, model=self.model, memory_bytes=self.memory_bytes)


def short_model(name: str) -> str:
    """ "NVIDIA H100 80GB HBM3" -> "H100", "Tesla V100-SXM2-16GB" -> "V100", "NVIDIA GeForce RTX 4090" -> "RTX-4090"."""
    words = [w for w in re.split(r"\s+", name.strip()) if w and w.lower() not in _VENDOR]
    words = [w for w in words if not _FORM.match(w)]
    if not words:
        return name.strip() or "GPU"
    first = words[0]
    if first.lower() in _FAMILY_PREFIX and len(words) > 1:
        return f"{first.upper()}-{words[1].split('-')[0]}"
    return first.split("-")[0]


def declared_gpus(text: str, agent_id: str) -> list[Gpu]:
    """Parse a declared inventory: "4xH100", "2xH100,2xA100", "H100" (one), "none" or "0" (no GPU)."""
    cleaned = text.strip()
    if cleaned.lower() in ("", "none", "0"):
        return []
    gpus: list[Gpu] = []
    for item in cleaned.split(","):
        match = _DECLARED_ITEM.match(item)
        if match is None:
            raise ValueError(f"--gpus: {item.strip()!r} is not COUNTxMODEL (e.g. 4xH100)")
        count = int(match.group(1)) if match.group(1) else 1
        if count < 1 or count > 64:
            raise ValueError(f"--gpus: {item.strip()!r}: the count must be 1 to 64")
        model = match.group(2)
        for _ in range(count):
            index = len(gpus)
            gpus.append(Gpu(index=index, uuid=f"GPU-{agent_id}-{index}", name=model, model=model))
    return gpus


def detect_gpus() -> list[Gpu]:
    """The GPUs NVML sees, in NVML's order; none when there is no driver or no NVML."""
    try:
        import pynvml  # type: ignore[import-untyped]
    except ImportError:
        log.info("nvidia-ml-py is not installed; reporting no GPUs")
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        log.info("no NVIDIA driver found; reporting no GPUs", reason=str(e))
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(pynvml.nvmlDeviceGetName(handle))
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            memory = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            gpus.append(Gpu(index=index, uuid=uuid, name=name, model=short_model(name), memory_bytes=memory))
        return gpus
    except pynvml.NVMLError as e:
        log.warning("NVML failed while listing GPUs; reporting none", reason=str(e))
        return []
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def gpu_model_label(gpus: Sequence[Gpu]) -> str:
    """The `gpu_model` label of a host: its model, or the models joined by ',' on a mixed host."""
    return ",".join(sorted({g.model for g in gpus}))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
